//! The only module that touches packet memory.
//!
//! It walks Ethernet (up to two VLAN tags), IPv4 (with options) or IPv6 (with
//! a bounded walk over extension headers) and finds the TCP or UDP destination
//! port. Whenever it cannot be sure that a packet is *not* TCP/UDP to us, it
//! answers [`Parsed::Malformed`], which the decision drops.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use knock_common::{
    Proto,
    decide::{FrameBytes, Packet, Parsed},
    flow::Segment,
    source::{FAMILY_V6, SourceKey},
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

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parsed {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        // Shorter than an Ethernet header: nothing the stack would deliver.
        return Parsed::Unrelated;
    };
    // SAFETY: bounds checked by `ptr_at`.
    let mut ether_type = u16::from_be_bytes(unsafe { (*eth).ether_type });
    let mut offset = ETH_HLEN;

    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let Some(vlan) = ptr_at::<VlanHdr>(ctx, offset) else {
            return Parsed::Malformed;
        };
        // SAFETY: bounds checked by `ptr_at`.
        ether_type = u16::from_be_bytes(unsafe { (*vlan).ether_type });
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
fn ipv4(ctx: &XdpContext, offset: usize) -> Parsed {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, offset) else {
        return Parsed::Malformed;
    };
    // SAFETY: bounds checked by `ptr_at`.
    let (version_ihl, total_len, frag, proto, src) =
        unsafe { ((*ip).version_ihl, (*ip).total_len, (*ip).frag, (*ip).proto, (*ip).src) };
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
    let ip_end = offset + usize::from(u16::from_be_bytes(total_len));
    transport(ctx, (offset, offset + ihl * 4), ip_end, transport_proto, SourceKey::v4(src))
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, offset: usize) -> Parsed {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, offset) else {
        return Parsed::Malformed;
    };
    // SAFETY: bounds checked by `ptr_at`.
    let (version, payload_len, mut next, src) = unsafe {
        ((*ip).version_class_flow[0] >> 4, (*ip).payload_len, (*ip).next_header, (*ip).src)
    };
    if version != 6 {
        return Parsed::Malformed;
    }
    let src = SourceKey::v6(src);
    let ip = offset;
    let mut offset = offset + IPV6_HLEN;
    let ip_end = offset + usize::from(u16::from_be_bytes(payload_len));

    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_TCP => return transport(ctx, (ip, offset), ip_end, Proto::Tcp, src),
            IPPROTO_UDP => return transport(ctx, (ip, offset), ip_end, Proto::Udp, src),
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
        IPPROTO_TCP => transport(ctx, (ip, offset), ip_end, Proto::Tcp, src),
        IPPROTO_UDP => transport(ctx, (ip, offset), ip_end, Proto::Udp, src),
        // Still inside the chain: TCP/UDP may follow, so we cannot tell.
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT => {
            Parsed::Malformed
        }
        _ => Parsed::Unrelated,
    }
}

/// Reads the ports, and for TCP what flow tracking needs: flags, sequence
/// and acknowledgement numbers, and the segment's length in sequence space
/// (from the IP header's length field: a lying length only misleads the
/// tracking of the liar's own flow). The whole minimal header must be
/// present: a first fragment too short to hold it (the tiny-fragment attack,
/// RFC 1858) is dropped rather than guessed at.
#[inline(always)]
fn transport(
    ctx: &XdpContext,
    (ip, offset): (usize, usize),
    ip_end: usize,
    proto: Proto,
    src: SourceKey,
) -> Parsed {
    // One bounds-checked read per header: the verifier tracks the range of
    // that one pointer, not of a second one derived from the same offset.
    let (src_port, dst_port, tcp, payload_len) = match proto {
        Proto::Tcp => match read::<TcpHdr>(ctx, offset) {
            Some(tcp) => {
                let header_len = usize::from(tcp.data_offset >> 4) * 4;
                let payload = ip_end.saturating_sub(offset).saturating_sub(header_len);
                let seq = u32::from_be_bytes(tcp.seq);
                let ack = u32::from_be_bytes(tcp.ack);
                (tcp.src_port, tcp.dst_port, Segment::new(tcp.flags, seq, ack, payload as u32), 0)
            }
            None => return Parsed::Malformed,
        },
        Proto::Udp => match read::<UdpHdr>(ctx, offset) {
            Some(udp) => {
                let payload =
                    u16::from_be_bytes(udp.len).saturating_sub(size_of::<UdpHdr>() as u16);
                (udp.src_port, udp.dst_port, Segment::default(), payload)
            }
            None => return Parsed::Malformed,
        },
    };
    Parsed::Transport(Packet {
        src,
        proto,
        sport: u16::from_be_bytes(src_port),
        dport: u16::from_be_bytes(dst_port),
        tcp,
        payload_len,
        // Offsets stay far below 64 KiB: the walks above are bounded.
        ip_at: ip as u16,
        l4_at: offset as u16,
    })
}

/// The bytes only single-packet authorization reads, read on demand.
pub struct Bytes<'a>(pub &'a XdpContext);

impl FrameBytes for Bytes<'_> {
    #[inline(always)]
    fn read_spa(&self, pkt: &Packet, scratch: &mut spa::Scratch) -> bool {
        let payload = usize::from(pkt.l4_at) + size_of::<UdpHdr>();
        let Some(datagram) = ptr_at::<[u8; spa::DATAGRAM_LEN]>(self.0, payload) else {
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
        let ip = usize::from(pkt.ip_at);
        scratch.server = if pkt.src.family == FAMILY_V6 {
            match ptr_at::<Ipv6Hdr>(self.0, ip) {
                // SAFETY: bounds checked by `ptr_at`.
                Some(h) => SourceKey::v6(unsafe { (*h).dst }),
                None => return false,
            }
        } else {
            match ptr_at::<Ipv4Hdr>(self.0, ip) {
                // SAFETY: bounds checked by `ptr_at`.
                Some(h) => SourceKey::v4(unsafe { (*h).dst }),
                None => return false,
            }
        };
        true
    }
}
