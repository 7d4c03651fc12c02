//! Crafted Ethernet frames. Checksums are left zero: XDP runs before anything
//! verifies them, and the program does not read them.

use std::net::IpAddr;

use knock_common::{Proto, proto::tcp_flags};

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_DSTOPTS: u8 = 60;

pub const UDP_PAYLOAD: &[u8] = b"ping";

/// An IPv6 extension header to insert before the transport header.
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    HopByHop,
    Routing,
    DestOptions,
    /// A fragment header with this offset (in 8-byte units); 0 is a first fragment.
    Fragment {
        offset: u16,
    },
}

/// Builds a frame layer by layer.
#[derive(Clone, Debug)]
pub struct Frame {
    pub vlans: Vec<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: Proto,
    pub dport: u16,
    /// IPv4 options length in 32-bit words (0..=10).
    pub ipv4_option_words: u8,
    /// IPv4 fragment offset in 8-byte units.
    pub ipv4_frag_offset: u16,
    pub ipv6_ext: Vec<Ext>,
    /// TCP flags (SYN unless changed).
    pub tcp_flags: u8,
    /// TCP sequence and acknowledgement numbers (1 and 0 unless changed).
    pub tcp_seq: u32,
    pub tcp_ack: u32,
    /// The UDP payload (`UDP_PAYLOAD` unless changed).
    pub udp_payload: Vec<u8>,
}

impl Frame {
    pub fn new(src: IpAddr, dst: IpAddr, l4: Proto, dport: u16) -> Self {
        Self {
            vlans: vec![],
            src,
            dst,
            l4,
            dport,
            ipv4_option_words: 0,
            ipv4_frag_offset: 0,
            ipv6_ext: vec![],
            tcp_flags: tcp_flags::SYN,
            tcp_seq: 1,
            tcp_ack: 0,
            udp_payload: UDP_PAYLOAD.to_vec(),
        }
    }

    /// The frame's bytes.
    pub fn build(&self) -> Vec<u8> {
        self.build_with_sport(40000)
    }

    /// The frame's bytes, from source port `sport`.
    pub fn build_with_sport(&self, sport: u16) -> Vec<u8> {
        let transport = self.transport(sport);
        let ether_type = match self.src {
            IpAddr::V4(_) => ETH_P_IPV4,
            IpAddr::V6(_) => ETH_P_IPV6,
        };
        let mut out = ethernet(&self.vlans, ether_type);
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let ihl = 5 + self.ipv4_option_words;
                let total = usize::from(ihl) * 4 + transport.len();
                out.push(0x40 | ihl);
                out.push(0);
                out.extend_from_slice(&(total as u16).to_be_bytes());
                out.extend_from_slice(&[0x12, 0x34]);
                out.extend_from_slice(&self.ipv4_frag_offset.to_be_bytes());
                out.push(64);
                out.push(self.l4.number());
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&src.octets());
                out.extend_from_slice(&dst.octets());
                // NOP options: valid, and they push the transport header back.
                out.extend(std::iter::repeat_n(1u8, usize::from(self.ipv4_option_words) * 4));
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let mut chain = Vec::new();
                let kinds: Vec<u8> = self
                    .ipv6_ext
                    .iter()
                    .map(|e| match e {
                        Ext::HopByHop => IPPROTO_HOPOPTS,
                        Ext::Routing => IPPROTO_ROUTING,
                        Ext::DestOptions => IPPROTO_DSTOPTS,
                        Ext::Fragment { .. } => IPPROTO_FRAGMENT,
                    })
                    .chain([self.l4.number()])
                    .collect();
                for (i, ext) in self.ipv6_ext.iter().enumerate() {
                    let next = kinds[i + 1];
                    match ext {
                        Ext::Fragment { offset } => {
                            chain.extend_from_slice(&[next, 0]);
                            chain.extend_from_slice(&(offset << 3).to_be_bytes());
                            chain.extend_from_slice(&[0, 0, 0, 1]);
                        }
                        // 16 bytes (len field 1): checks that the length is honoured.
                        _ => {
                            chain.extend_from_slice(&[next, 1]);
                            chain.extend_from_slice(&[1, 12]);
                            chain.extend_from_slice(&[0; 12]);
                        }
                    }
                }
                let payload = chain.len() + transport.len();
                out.extend_from_slice(&[0x60, 0, 0, 0]);
                out.extend_from_slice(&(payload as u16).to_be_bytes());
                out.push(kinds[0]);
                out.push(64);
                out.extend_from_slice(&src.octets());
                out.extend_from_slice(&dst.octets());
                out.extend_from_slice(&chain);
            }
            _ => panic!("source and destination must be of one family"),
        }
        out.extend_from_slice(&transport);
        out
    }

    /// Bytes after the transport header (a UDP datagram carries a payload).
    pub fn payload_len(&self) -> usize {
        match self.l4 {
            Proto::Tcp => 0,
            Proto::Udp => self.udp_payload.len(),
        }
    }

    fn transport(&self, sport: u16) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&sport.to_be_bytes());
        t.extend_from_slice(&self.dport.to_be_bytes());
        match self.l4 {
            Proto::Tcp => {
                t.extend_from_slice(&self.tcp_seq.to_be_bytes());
                t.extend_from_slice(&self.tcp_ack.to_be_bytes());
                t.push(5 << 4);
                t.push(self.tcp_flags);
                t.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
            }
            Proto::Udp => {
                t.extend_from_slice(&(8 + self.udp_payload.len() as u16).to_be_bytes());
                t.extend_from_slice(&[0, 0]);
                t.extend_from_slice(&self.udp_payload);
            }
        }
        t
    }
}

/// An Ethernet header with the given VLAN tags (outermost first).
pub fn ethernet(vlans: &[u16], ether_type: u16) -> Vec<u8> {
    let mut out = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for (i, vid) in vlans.iter().enumerate() {
        // The outer tag of a QinQ stack is 802.1ad, the inner ones 802.1Q.
        let tpid = if i == 0 && vlans.len() > 1 { ETH_P_8021AD } else { ETH_P_8021Q };
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&vid.to_be_bytes());
    }
    out.extend_from_slice(&ether_type.to_be_bytes());
    out
}

/// An ARP request.
pub fn arp() -> Vec<u8> {
    let mut out = ethernet(&[], ETH_P_ARP);
    out.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    out.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 10, 0, 0, 2]);
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 0, 0, 1]);
    out
}

/// An ICMP echo request (IPv4) from `src`.
pub fn icmp_echo(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut out = ethernet(&[], ETH_P_IPV4);
    out.extend_from_slice(&[0x45, 0, 0, 28, 0, 1, 0, 0, 64, IPPROTO_ICMP, 0, 0]);
    out.extend_from_slice(&src);
    out.extend_from_slice(&dst);
    out.extend_from_slice(&[8, 0, 0, 0, 0, 1, 0, 1]);
    out
}

/// An ICMPv6 echo request.
pub fn icmpv6_echo(src: [u8; 16], dst: [u8; 16]) -> Vec<u8> {
    let mut out = ethernet(&[], ETH_P_IPV6);
    out.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, IPPROTO_ICMPV6, 64]);
    out.extend_from_slice(&src);
    out.extend_from_slice(&dst);
    out.extend_from_slice(&[128, 0, 0, 0, 0, 1, 0, 1]);
    out
}
