//! The only module that touches packet memory.
//!
//! It walks Ethernet (up to two VLAN tags), IPv4 (with options) or IPv6 (with
//! a bounded walk over extension headers) and finds the TCP or UDP destination
//! port. Whenever it cannot be sure that a packet is *not* TCP/UDP to us, it
//! answers [`Parsed::Malformed`], which the decision drops. Everything else
//! the decision needs (the source, the TCP sequence space, an SPA datagram)
//! is read from the frame only when the decision asks.
//!
//! The header types are our own plain byte arrays (alignment 1, read
//! unaligned). The `network-types` crate was weighed: it has no IPv6
//! extension headers (most of the walk below), exposes the TCP flags only
//! one bit at a time through a bitfield (the decision needs the byte), and
//! types the EtherType as a native `u16`, whose alignment of 2 nothing
//! guarantees in packet memory.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use knock_common::{
    Proto,
    decide::{Parsed, Transport},
    flow::Segment,
    source::SourceKey,
    spa,
};

/// 802.1Q and 802.1ad: one customer tag and one service tag (QinQ) is as deep
/// as deployed networks go. A deeper stack could still hide IP, so it drops.
const MAX_VLAN_TAGS: usize = 2;

/// Extension headers walked before giving up. Real traffic carries one or two;
/// the bound keeps the verifier's walk short. A chain longer than this could
/// still end in TCP/UDP, so it drops.
const MAX_IPV6_EXT_HEADERS: usize = 8;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = Proto::Tcp.number();
const IPPROTO_UDP: u8 = Proto::Udp.number();
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const IPV6_HLEN: usize = 40;

#[repr(C)]
#[derive(Clone, Copy)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    ether_type: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct VlanHdr {
    tci: [u8; 2],
    ether_type: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    total_len: [u8; 2],
    id: [u8; 2],
    frag: [u8; 2],
    ttl: u8,
    proto: u8,
    check: [u8; 2],
    src: [u8; 4],
    dst: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv6Hdr {
    version_class_flow: [u8; 4],
    payload_len: [u8; 2],
    next_header: u8,
    hop_limit: u8,
    src: [u8; 16],
    dst: [u8; 16],
}

/// The first two bytes every IPv6 extension header starts with. For the
/// fragment header the second byte is reserved; its length is fixed.
#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv6ExtHdr {
    next_header: u8,
    len: u8,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv6FragHdr {
    next_header: u8,
    reserved: u8,
    offset_flags: [u8; 2],
    id: [u8; 4],
}

/// The minimal (option-less) TCP header.
#[repr(C)]
#[derive(Clone, Copy)]
struct TcpHdr {
    src_port: [u8; 2],
    dst_port: [u8; 2],
    seq: [u8; 4],
    ack: [u8; 4],
    data_offset: u8,
    flags: u8,
    window: [u8; 2],
    check: [u8; 2],
    urgent: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UdpHdr {
    src_port: [u8; 2],
    dst_port: [u8; 2],
    len: [u8; 2],
    check: [u8; 2],
}

/// Bounds-checked pointer to a `T` at `offset` bytes into the frame.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Reads a `T` at `offset`, or `None` when the frame is too short.
#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    // SAFETY: `ptr_at` checked that the whole `T` lies inside the frame, and
    // every header type here is plain bytes with alignment 1.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { p.read_unaligned() })
}

/// Reads one field of the `H` at `offset` (bounds-checking the whole
/// header), without copying the rest of it.
#[inline(always)]
fn field<H, T: Copy>(ctx: &XdpContext, offset: usize, get: impl FnOnce(&H) -> T) -> Option<T> {
    // SAFETY: `ptr_at` checked that the whole `H` lies inside the frame;
    // every header type here is plain bytes with alignment 1.
    ptr_at::<H>(ctx, offset).map(|p| get(unsafe { &*p }))
}

/// Finds the transport header of a frame. Whenever it cannot be sure that
/// a packet is *not* TCP/UDP to us, it answers [`Parsed::Malformed`].
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parsed<Headers<'_>> {
    let Some(ether_type) = field(ctx, 0, |eth: &EthHdr| eth.ether_type) else {
        // Shorter than an Ethernet header: nothing the stack would deliver.
        return Parsed::Unrelated;
    };
    let mut ether_type = u16::from_be_bytes(ether_type);
    let mut offset = ETH_HLEN;

    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let Some(inner) = field(ctx, offset, |vlan: &VlanHdr| vlan.ether_type) else {
            return Parsed::Malformed;
        };
        ether_type = u16::from_be_bytes(inner);
        offset += VLAN_HLEN;
    }

    match ether_type {
        ETH_P_IPV4 => ipv4(ctx, offset),
        ETH_P_IPV6 => ipv6(ctx, offset),
        // A third tag: too deep to follow, and it could still hide IP.
        ETH_P_8021Q | ETH_P_8021AD => Parsed::Malformed,
        _ => Parsed::Unrelated,
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, offset: usize) -> Parsed<Headers<'_>> {
    let Some((version_ihl, frag, proto)) =
        field(ctx, offset, |ip: &Ipv4Hdr| (ip.version_ihl, ip.frag, ip.proto))
    else {
        return Parsed::Malformed;
    };
    let ihl = usize::from(version_ihl & 0x0f);
    if version_ihl >> 4 != 4 || ihl < 5 {
        return Parsed::Malformed;
    }
    let transport_proto = match proto {
        IPPROTO_TCP => Proto::Tcp,
        IPPROTO_UDP => Proto::Udp,
        _ => return Parsed::Unrelated,
    };
    // A non-first fragment carries no ports. The kernel delivers nothing of a
    // datagram without its first fragment, and that one is judged by its
    // ports below, so later fragments pass (fragmented UDP elsewhere keeps
    // working) and can never complete a datagram to a protected port alone.
    if u16::from_be_bytes(frag) & 0x1fff != 0 {
        return Parsed::Unrelated;
    }
    // IHL is 5..=15 words here, so the options are honoured, never assumed away.
    transport(ctx, (offset, offset + ihl * 4), transport_proto, false)
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, offset: usize) -> Parsed<Headers<'_>> {
    let Some((version, mut next)) =
        field(ctx, offset, |ip: &Ipv6Hdr| (ip.version_class_flow[0] >> 4, ip.next_header))
    else {
        return Parsed::Malformed;
    };
    if version != 6 {
        return Parsed::Malformed;
    }
    let ip = offset;
    let mut offset = offset + IPV6_HLEN;

    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_TCP => return transport(ctx, (ip, offset), Proto::Tcp, true),
            IPPROTO_UDP => return transport(ctx, (ip, offset), Proto::Udp, true),
            IPPROTO_FRAGMENT => {
                let Some(frag) = read::<Ipv6FragHdr>(ctx, offset) else {
                    return Parsed::Malformed;
                };
                // Same reasoning as for IPv4: only the first fragment has ports.
                if u16::from_be_bytes(frag.offset_flags) & 0xfff8 != 0 {
                    return Parsed::Unrelated;
                }
                next = frag.next_header;
                offset += size_of::<Ipv6FragHdr>();
            }
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH => {
                let Some(ext) = read::<Ipv6ExtHdr>(ctx, offset) else {
                    return Parsed::Malformed;
                };
                // RFC 8200 counts in 8-octet units past the first 8; AH (RFC
                // 4302) in 4-octet units minus 2.
                let len = if next == IPPROTO_AH {
                    (usize::from(ext.len) + 2) * 4
                } else {
                    (usize::from(ext.len) + 1) * 8
                };
                next = ext.next_header;
                offset += len;
            }
            // ICMPv6, ESP, no-next-header, ...: no port to protect.
            _ => return Parsed::Unrelated,
        }
    }
    match next {
        // The chain ended exactly at the limit on a transport header.
        IPPROTO_TCP => transport(ctx, (ip, offset), Proto::Tcp, true),
        IPPROTO_UDP => transport(ctx, (ip, offset), Proto::Udp, true),
        // Still inside the chain: TCP/UDP may follow, so we cannot tell.
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT => {
            Parsed::Malformed
        }
        _ => Parsed::Unrelated,
    }
}

/// Reads the destination port; the rest waits in [`Headers`] for the paths
/// that need it. The whole minimal header must be in the frame. A first
/// fragment whose IP packet ends inside it (the tiny-fragment attack, RFC
/// 1858) is judged by its ports, which it holds; where the rest matters
/// ([`Transport::segment`]) it is malformed.
#[inline(always)]
fn transport(
    ctx: &XdpContext,
    (ip, offset): (usize, usize),
    proto: Proto,
    v6: bool,
) -> Parsed<Headers<'_>> {
    let dport = match proto {
        Proto::Tcp => field(ctx, offset, |tcp: &TcpHdr| tcp.dst_port),
        Proto::Udp => field(ctx, offset, |udp: &UdpHdr| udp.dst_port),
    };
    let Some(dport) = dport else {
        return Parsed::Malformed;
    };
    Parsed::Transport(Headers {
        ctx,
        proto,
        v6,
        dport: u16::from_be_bytes(dport),
        // Offsets stay far below 64 KiB: the walks above are bounded.
        ip_at: ip as u16,
        l4_at: offset as u16,
    })
}

/// A TCP or UDP packet in the frame: its protocol and destination port,
/// and where its headers lie, to read the rest on demand.
pub struct Headers<'a> {
    ctx: &'a XdpContext,
    proto: Proto,
    v6: bool,
    dport: u16,
    ip_at: u16,
    l4_at: u16,
}

impl Headers<'_> {
    #[inline(always)]
    fn tcp<T: Copy>(&self, get: impl FnOnce(&TcpHdr) -> T) -> Option<T> {
        field(self.ctx, usize::from(self.l4_at), get)
    }

    #[inline(always)]
    fn udp<T: Copy>(&self, get: impl FnOnce(&UdpHdr) -> T) -> Option<T> {
        field(self.ctx, usize::from(self.l4_at), get)
    }

    /// Where the IP packet ends by its own length field; `None` when that
    /// runs past the frame. The host drops such a packet, and its length
    /// is the one field a forger could use to move a flow's tracking far.
    /// A length of 0 (a GRO packet past 64 KiB under generic XDP, or an
    /// IPv6 jumbogram) ends with the frame.
    #[inline(always)]
    fn ip_end(&self) -> Option<usize> {
        let ip = usize::from(self.ip_at);
        let frame_end = self.ctx.data_end() - self.ctx.data();
        let len = if self.v6 {
            be16(field(self.ctx, ip, |h: &Ipv6Hdr| h.payload_len)?)
        } else {
            be16(field(self.ctx, ip, |h: &Ipv4Hdr| h.total_len)?)
        };
        if len == 0 {
            return Some(frame_end);
        }
        let end = ip + len + if self.v6 { IPV6_HLEN } else { 0 };
        (end <= frame_end).then_some(end)
    }
}

#[inline(always)]
fn be16(bytes: [u8; 2]) -> usize {
    usize::from(u16::from_be_bytes(bytes))
}

impl Transport for Headers<'_> {
    #[inline(always)]
    fn proto(&self) -> Proto {
        self.proto
    }

    #[inline(always)]
    fn dport(&self) -> u16 {
        self.dport
    }

    #[inline(always)]
    fn source(&self) -> Option<SourceKey> {
        let ip = usize::from(self.ip_at);
        if self.v6 {
            field(self.ctx, ip, |h: &Ipv6Hdr| SourceKey::v6(h.src))
        } else {
            field(self.ctx, ip, |h: &Ipv4Hdr| SourceKey::v4(h.src))
        }
    }

    #[inline(always)]
    fn sport(&self) -> Option<u16> {
        let sport = match self.proto {
            Proto::Tcp => self.tcp(|tcp| tcp.src_port),
            Proto::Udp => self.udp(|udp| udp.src_port),
        };
        sport.map(u16::from_be_bytes)
    }

    #[inline(always)]
    fn tcp_flags(&self) -> Option<u8> {
        match self.proto {
            Proto::Tcp => self.tcp(|tcp| tcp.flags),
            Proto::Udp => Some(0),
        }
    }

    /// The flags, the sequence and acknowledgement numbers, and the
    /// segment's length in sequence space.
    #[inline(always)]
    fn segment(&self) -> Option<Segment> {
        let tcp = read::<TcpHdr>(self.ctx, usize::from(self.l4_at))?;
        let header_len = usize::from(tcp.data_offset >> 4) * 4;
        let l4_end = usize::from(self.l4_at) + header_len.max(size_of::<TcpHdr>());
        // A first fragment whose TCP header ends past the IP packet had
        // its flags and numbers read from Ethernet padding (RFC 1858).
        let payload = self.ip_end()?.checked_sub(l4_end)?;
        let (seq, ack) = (u32::from_be_bytes(tcp.seq), u32::from_be_bytes(tcp.ack));
        Some(Segment::new(tcp.flags, seq, ack, payload as u32))
    }

    #[inline(always)]
    fn udp_payload_len(&self) -> Option<u16> {
        let len = u16::from_be_bytes(self.udp(|udp| udp.len)?);
        Some(len.saturating_sub(size_of::<UdpHdr>() as u16))
    }

    #[inline(always)]
    fn read_spa(&self, scratch: &mut spa::Scratch) -> bool {
        let payload = usize::from(self.l4_at) + size_of::<UdpHdr>();
        let Some(datagram) = ptr_at::<[u8; spa::DATAGRAM_LEN]>(self.ctx, payload) else {
            return false;
        };
        // SAFETY: bounds checked by `ptr_at`; plain bytes, copied straight
        // from the frame into the scratch map (no stack on the way).
        unsafe {
            core::ptr::copy_nonoverlapping(
                datagram.cast::<u8>(),
                scratch.datagram.as_mut_ptr(),
                spa::DATAGRAM_LEN,
            )
        };
        let ip = usize::from(self.ip_at);
        let server = if self.v6 {
            field(self.ctx, ip, |h: &Ipv6Hdr| SourceKey::v6(h.dst))
        } else {
            field(self.ctx, ip, |h: &Ipv4Hdr| SourceKey::v4(h.dst))
        };
        match server {
            Some(server) => {
                scratch.server = server;
                true
            }
            None => false,
        }
    }
}
