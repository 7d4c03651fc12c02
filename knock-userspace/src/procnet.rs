//! Reading the host's sockets from /proc/net (of the daemon's network namespace).

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use crate::ports::{Proto, ProtoPort};

/// `st` of a listening TCP socket, and of an established one.
const TCP_LISTEN: &str = "0A";
const TCP_ESTABLISHED: &str = "01";

/// One line of /proc/net/{tcp,udp}{,6}.
struct Socket {
    local: (IpAddr, u16),
    remote: (IpAddr, u16),
    state: String,
}

fn sockets(file: &str) -> Vec<Socket> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Vec::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some(Socket {
                local: endpoint(fields.get(1)?)?,
                remote: endpoint(fields.get(2)?)?,
                state: (*fields.get(3)?).to_owned(),
            })
        })
        .collect()
}

/// `0100007F:0016` or 32 hex digits and a port: addresses are printed as
/// 32-bit words in host byte order.
fn endpoint(text: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word =
        |i: usize| u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok().map(u32::to_ne_bytes);
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(bytes);
            // Dual-stack sockets see IPv4 peers as ::ffff:a.b.c.d; on the wire
            // (and in the XDP program) they are IPv4.
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some((ip, port))
}

/// Local ports with a listening TCP socket or a bound UDP socket.
pub fn listening_ports() -> BTreeSet<ProtoPort> {
    let tcp = ["/proc/net/tcp", "/proc/net/tcp6"]
        .into_iter()
        .flat_map(sockets)
        .filter(|s| s.state == TCP_LISTEN);
    let tcp = tcp.map(|s| ProtoPort { port: s.local.1, proto: Proto::Tcp });
    let udp = ["/proc/net/udp", "/proc/net/udp6"].into_iter().flat_map(sockets);
    let udp = udp.map(|s| ProtoPort { port: s.local.1, proto: Proto::Udp });
    tcp.chain(udp).collect()
}

/// Established TCP connections to one of `ports`: (peer address, peer port, local port).
pub fn established_to(ports: &BTreeSet<u16>) -> Vec<(IpAddr, u16, u16)> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .into_iter()
        .flat_map(sockets)
        .filter(|s| s.state == TCP_ESTABLISHED && ports.contains(&s.local.1))
        .map(|s| (s.remote.0, s.remote.1, s.local.1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_endpoints() {
        // 127.0.0.1:22 as a little-endian host prints it.
        let (ip, port) =
            endpoint(&format!("{:08X}:0016", u32::from_ne_bytes([127, 0, 0, 1]))).unwrap();
        assert_eq!((ip, port), ("127.0.0.1".parse().unwrap(), 22));
        let mapped: Ipv6Addr = "::ffff:10.0.0.2".parse().unwrap();
        let hex: String = mapped
            .octets()
            .chunks(4)
            .map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        assert_eq!(endpoint(&format!("{hex}:1F90")).unwrap(), ("10.0.0.2".parse().unwrap(), 8080));
        assert!(endpoint("zz:1").is_none());
    }

    #[test]
    fn sees_a_listening_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listening_ports().contains(&ProtoPort { port, proto: Proto::Tcp }));
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let established = established_to(&[port].into());
        assert!(
            established.iter().any(|(ip, _, local)| ip.is_loopback() && *local == port),
            "{established:?}"
        );
    }
}
