//! Echo services in the server namespace: what the daemon protects, and
//! what tells a test whether a packet got through.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, UdpSocket},
    thread,
};

use super::Lab;

impl Lab {
    /// A TCP echo service on `addr:port` in the server namespace.
    pub fn tcp_echo(&self, addr: &str, port: u16) {
        let addr = SocketAddr::new(addr.parse().unwrap(), port);
        let listener = self.server.enter(move || TcpListener::bind(addr).expect("bind tcp"));
        // Runs until the process ends; the namespace going away closes nothing
        // the test still needs.
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                thread::spawn(move || {
                    let mut stream = stream;
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = stream.read(&mut buf) {
                        if stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }

    /// A UDP echo service on `addr:port` in the server namespace.
    pub fn udp_echo(&self, addr: &str, port: u16) {
        let addr = SocketAddr::new(addr.parse().unwrap(), port);
        let socket = self.server.enter(move || UdpSocket::bind(addr).expect("bind udp"));
        thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, peer)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(&buf[..n], peer);
            }
        });
    }
}
