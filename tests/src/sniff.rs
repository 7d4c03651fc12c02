//! What got past XDP: an AF_PACKET tap on one interface of a namespace, and
//! a parser that finds the transport ports in what it recorded.
//!
//! The kernel runs XDP before it hands a frame to the packet taps, so the tap
//! records exactly the frames the program passed to the stack. (The tap sees
//! a frame after the kernel moved its outer VLAN tag out of the data; any
//! inner tags stay in it.)

use std::{
    io,
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
};

use crate::{
    frames::{
        ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_AH, IPPROTO_DSTOPTS,
        IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_TCP, IPPROTO_UDP,
    },
    lab::Netns,
    packet,
};

/// How often the reader looks at the stop flag.
const POLL_MS: libc::suseconds_t = 50;
/// Room for a burst of frames while the reader is busy.
const RCVBUF: libc::c_int = 8 << 20;

/// Records the frames arriving on one interface until [`Sniffer::finish`];
/// dropping it stops the reader and closes the socket.
pub struct Sniffer {
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<Vec<Vec<u8>>>>,
}

impl Sniffer {
    /// Starts recording the frames `iface` in `netns` receives. Recording has
    /// begun when this returns.
    pub fn start(netns: &Netns, iface: &str) -> Self {
        let iface = iface.to_owned();
        // The socket is bound inside the namespace and stays there.
        let socket = netns.enter(move || open(&iface)).expect("AF_PACKET socket");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let reader = thread::spawn(move || read_until(&socket, &flag));
        Self { stop, reader: Some(reader) }
    }

    /// Stops, and returns the frames received (outgoing ones left out), in order.
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::SeqCst);
        self.reader.take().unwrap().join().expect("sniffer thread panicked")
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// A tap on `iface`: every frame of every protocol, with room for bursts
/// and a receive timeout so the reader sees the stop flag.
fn open(iface: &str) -> io::Result<OwnedFd> {
    let socket = packet::socket(iface)?;
    packet::set_option(&socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &RCVBUF)?;
    let timeout = libc::timeval { tv_sec: 0, tv_usec: POLL_MS * 1000 };
    packet::set_option(&socket, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout)?;
    Ok(socket)
}

/// Reads frames until `stop`, then what is still queued.
fn read_until(socket: &OwnedFd, stop: &AtomicBool) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        // Once stopping, drain without waiting.
        let flags = if stopping { libc::MSG_DONTWAIT } else { 0 };
        match receive(socket, flags) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && stopping => return frames,
            Err(e)
                if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
            Err(e) => panic!("sniffer: recvfrom: {e}"),
        }
    }
}

/// One frame; `None` for a frame this host sent (the tap sees those too).
fn receive(socket: &OwnedFd, flags: libc::c_int) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 65536];
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: a valid fd, buffer and sockaddr of the given sizes.
    let n = unsafe {
        libc::recvfrom(
            socket.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            flags,
            &mut addr as *mut _ as *mut libc::sockaddr,
            &mut len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if addr.sll_pkttype == libc::PACKET_OUTGOING {
        return Ok(None);
    }
    buf.truncate(n as usize);
    Ok(Some(buf))
}

pub use knock_common::Proto;

/// What a recorded frame is, as far as ports go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// TCP or UDP whose destination port lies in the frame: not fragmented,
    /// or a first fragment. Only the port is needed, not the whole header.
    Ports { proto: Proto, dport: u16 },
    /// A non-first fragment: it carries no ports.
    LaterFragment,
    /// IPv4 or IPv6 that may be TCP or UDP, but whose destination port cannot
    /// be found: a bad version or header length, a header cut short.
    Malformed,
    /// Anything else: ARP, ICMP, neighbour discovery, ...
    Other,
}

const ETH_HLEN: usize = 14;

/// The source address and TCP destination port of an untagged IPv4 TCP
/// frame (not a later fragment); `None` for anything else.
pub fn ipv4_tcp(frame: &[u8]) -> Option<(std::net::Ipv4Addr, u16)> {
    if be16(frame, 12)? != ETH_P_IPV4 {
        return None;
    }
    let packet = &frame[ETH_HLEN..];
    match ipv4(packet) {
        Seen::Ports { proto: Proto::Tcp, dport } => {
            let src: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
            Some((src.into(), dport))
        }
        _ => None,
    }
}

/// Parses an Ethernet frame, through any number of VLAN tags, IPv4 options
/// and IPv6 extension headers. It reads what is in the frame and ignores
/// the length fields: the stack only ever trims a frame, so a port it could
/// use is a port found here.
pub fn classify(frame: &[u8]) -> Seen {
    let Some(mut ether_type) = be16(frame, 12) else {
        return Seen::Other;
    };
    let mut offset = ETH_HLEN;
    while matches!(ether_type, ETH_P_8021Q | ETH_P_8021AD) {
        let Some(inner) = be16(frame, offset + 2) else {
            return Seen::Malformed;
        };
        ether_type = inner;
        offset += 4;
    }
    match ether_type {
        ETH_P_IPV4 => ipv4(&frame[offset..]),
        ETH_P_IPV6 => ipv6(&frame[offset..]),
        _ => Seen::Other,
    }
}

fn ipv4(packet: &[u8]) -> Seen {
    if packet.len() < 20 || packet[0] >> 4 != 4 || packet[0] & 0x0f < 5 {
        return Seen::Malformed;
    }
    let Some(proto) = transport(packet[9]) else {
        return Seen::Other;
    };
    if be16(packet, 6).unwrap() & 0x1fff != 0 {
        return Seen::LaterFragment;
    }
    ports(packet, usize::from(packet[0] & 0x0f) * 4, proto)
}

fn ipv6(packet: &[u8]) -> Seen {
    if packet.len() < 40 || packet[0] >> 4 != 6 {
        return Seen::Malformed;
    }
    let mut next = packet[6];
    let mut offset = 40;
    // Every extension header is at least 8 bytes long, so the walk ends.
    loop {
        if let Some(proto) = transport(next) {
            return ports(packet, offset, proto);
        }
        let (Some(&following), Some(&len)) = (packet.get(offset), packet.get(offset + 1)) else {
            return Seen::Malformed;
        };
        offset += match next {
            IPPROTO_FRAGMENT => {
                let Some(offset_flags) = be16(packet, offset + 2) else {
                    return Seen::Malformed;
                };
                if offset_flags & 0xfff8 != 0 {
                    return Seen::LaterFragment;
                }
                8
            }
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => (usize::from(len) + 1) * 8,
            IPPROTO_AH => (usize::from(len) + 2) * 4,
            _ => return Seen::Other,
        };
        next = following;
    }
}

fn transport(proto: u8) -> Option<Proto> {
    match proto {
        IPPROTO_TCP => Some(Proto::Tcp),
        IPPROTO_UDP => Some(Proto::Udp),
        _ => None,
    }
}

/// The destination port at bytes 2..4 of the transport header at `offset`.
fn ports(packet: &[u8], offset: usize, proto: Proto) -> Seen {
    match be16(packet, offset + 2) {
        Some(dport) => Seen::Ports { proto, dport },
        None => Seen::Malformed,
    }
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().unwrap()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::{self, Ext, Frame};

    fn frame(l4: Proto, v6: bool) -> Frame {
        let (src, dst) = if v6 { ("fd00::2", "fd00::1") } else { ("10.0.0.2", "10.0.0.1") };
        Frame::new(src.parse().unwrap(), dst.parse().unwrap(), l4, 8022)
    }

    #[test]
    fn finds_ports_through_tags_options_and_extension_headers() {
        let mut f = frame(Proto::Tcp, false);
        f.vlans = vec![1, 2, 3];
        f.ipv4_option_words = 10;
        assert_eq!(classify(&f.build()), Seen::Ports { proto: Proto::Tcp, dport: 8022 });
        let mut f = frame(Proto::Udp, true);
        f.ipv6_ext = vec![Ext::HopByHop, Ext::Fragment { offset: 0 }, Ext::DestOptions];
        f.ipv6_ext.extend([Ext::Routing; 12]);
        assert_eq!(classify(&f.build()), Seen::Ports { proto: Proto::Udp, dport: 8022 });
    }

    #[test]
    fn later_fragments_carry_no_ports() {
        let mut f = frame(Proto::Tcp, false);
        f.ipv4_frag_offset = 3;
        assert_eq!(classify(&f.build()), Seen::LaterFragment);
        let mut f = frame(Proto::Udp, true);
        f.ipv6_ext = vec![Ext::DestOptions, Ext::Fragment { offset: 1 }];
        assert_eq!(classify(&f.build()), Seen::LaterFragment);
    }

    #[test]
    fn a_port_out_of_reach_is_malformed() {
        let whole = frame(Proto::Tcp, false).build();
        // Cut right before the destination port's last byte.
        assert_eq!(classify(&whole[..ETH_HLEN + 20 + 3]), Seen::Malformed);
        assert_eq!(
            classify(&whole[..ETH_HLEN + 20 + 4]),
            Seen::Ports { proto: Proto::Tcp, dport: 8022 }
        );
        let mut bad_ihl = whole.clone();
        bad_ihl[ETH_HLEN] = 0x44;
        assert_eq!(classify(&bad_ihl), Seen::Malformed);
        let mut f = frame(Proto::Udp, true);
        f.ipv6_ext = vec![Ext::DestOptions];
        let whole = f.build();
        assert_eq!(classify(&whole[..ETH_HLEN + 40 + 10]), Seen::Malformed);
    }

    #[test]
    fn everything_else_is_other() {
        assert_eq!(classify(&frames::arp()), Seen::Other);
        assert_eq!(classify(&frames::icmp_echo([10, 0, 0, 2], [10, 0, 0, 1])), Seen::Other);
        assert_eq!(classify(&frames::icmpv6_echo([0; 16], [0; 16])), Seen::Other);
    }
}
