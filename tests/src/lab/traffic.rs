//! Traffic from the client namespace: probes and exchanges with the echo
//! services, connections kept open across a test, and knocks sent from
//! raw sockets.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    thread,
    time::Duration,
};

use knock_common::{Proto, ProtoPort};
use knock_userspace::probe::{self, PortState};

use super::{
    Lab,
    sockets::{connect_from, syn_from},
};

impl Lab {
    /// Probes a TCP port from the client namespace (2 s timeout).
    pub fn tcp_state(&self, server: &str, port: u16) -> PortState {
        let server = server.to_owned();
        self.client.enter(move || {
            probe::check(&server, port, Duration::from_secs(2)).expect("probe failed").1
        })
    }

    /// Opens a TCP connection from `source` in the client namespace and
    /// exchanges a line with the echo service; true on success.
    pub fn tcp_exchange(&self, source: &str, server: &str, port: u16) -> bool {
        let source: IpAddr = source.parse().unwrap();
        let server: IpAddr = server.parse().unwrap();
        self.client.enter(move || {
            let Ok(mut stream) = connect_from(source, SocketAddr::new(server, port)) else {
                return false;
            };
            stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 5];
            stream.write_all(b"hello").is_ok()
                && stream.read_exact(&mut buf).is_ok()
                && &buf == b"hello"
        })
    }

    /// Sends a UDP datagram from the client namespace and waits for the echo.
    pub fn udp_exchange(&self, server: &str, port: u16) -> bool {
        let server: IpAddr = server.parse().unwrap();
        self.client.enter(move || {
            let bind: SocketAddr =
                if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().unwrap();
            let socket = UdpSocket::bind(bind).unwrap();
            socket.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
            // A few tries, so a lost datagram is not mistaken for a drop.
            (0..3).any(|_| {
                socket.send_to(b"ping", (server, port)).unwrap();
                let mut buf = [0u8; 16];
                matches!(socket.recv_from(&mut buf), Ok((4, _))) && &buf[..4] == b"ping"
            })
        })
    }

    /// Opens a TCP connection from `source`; `None` when it cannot connect.
    pub fn tcp_session(&self, source: &str, server: &str, port: u16) -> Option<TcpSession> {
        let source: IpAddr = source.parse().unwrap();
        let target = SocketAddr::new(server.parse().unwrap(), port);
        self.client
            .enter(move || connect_from(source, target).ok())
            .map(|stream| TcpSession { stream })
    }

    /// A UDP socket bound to `source` in the client namespace.
    pub fn udp_session(&self, source: &str, server: &str, port: u16) -> UdpSession {
        let source: IpAddr = source.parse().unwrap();
        let server = SocketAddr::new(server.parse().unwrap(), port);
        let socket =
            self.client.enter(move || UdpSocket::bind(SocketAddr::new(source, 0)).unwrap());
        UdpSession { socket, server }
    }

    /// Sends knocks from `source` (an address of the client namespace):
    /// a SYN per TCP knock, a datagram per UDP knock, `gap` apart.
    pub fn send_knocks(&self, source: &str, server: &str, knocks: &[ProtoPort], gap: Duration) {
        let source: IpAddr = source.parse().unwrap();
        let server: IpAddr = server.parse().unwrap();
        let knocks = knocks.to_vec();
        self.client.enter(move || {
            for knock in knocks {
                let target = SocketAddr::new(server, knock.port);
                match knock.proto {
                    Proto::Udp => {
                        let socket = UdpSocket::bind(SocketAddr::new(source, 0)).unwrap();
                        socket.send_to(b"knock", target).unwrap();
                    }
                    Proto::Tcp => syn_from(source, target),
                }
                thread::sleep(gap);
            }
        })
    }

    /// Sends one SYN from `source` to every port from 1 to 65535, in order.
    pub fn spray_syns(&self, source: &str, server: &str) {
        let source: IpAddr = source.parse().unwrap();
        let server: IpAddr = server.parse().unwrap();
        self.client.enter(move || {
            for port in 1..=u16::MAX {
                syn_from(source, SocketAddr::new(server, port));
            }
        })
    }
}

/// An open TCP connection from the client namespace to an echo service.
pub struct TcpSession {
    stream: TcpStream,
}

impl TcpSession {
    /// The client's port: with the addresses, the flow's 4-tuple.
    pub fn local_port(&self) -> u16 {
        self.stream.local_addr().unwrap().port()
    }

    /// Ends the client's side of the connection: its FIN goes out.
    pub fn finish(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }

    /// Aborts the connection: with a zero linger time, closing the socket
    /// sends a RST (at the client's next sequence number, as the kernel
    /// keeps it) instead of a FIN.
    pub fn abort(self) {
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: a valid socket and a linger struct of the given size.
        let rc = unsafe {
            libc::setsockopt(
                self.stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
        drop(self.stream);
    }

    /// Sends a line and waits (1.5 s at most) for its echo.
    pub fn exchange(&mut self) -> bool {
        let mut buf = [0u8; 5];
        self.stream.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
        self.stream.write_all(b"hello").is_ok()
            && self.stream.read_exact(&mut buf).is_ok()
            && &buf == b"hello"
    }
}

/// A UDP socket in the client namespace talking to an echo service: one flow.
pub struct UdpSession {
    socket: UdpSocket,
    server: SocketAddr,
}

impl UdpSession {
    /// Sends a datagram and waits (1 s at most) for its echo.
    pub fn exchange(&self) -> bool {
        self.socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        self.socket.send_to(b"ping", self.server).unwrap();
        let mut buf = [0u8; 16];
        matches!(self.socket.recv_from(&mut buf), Ok((4, _))) && &buf[..4] == b"ping"
    }
}
