//! What happens to a parsed packet: the enforcement decision, written once as
//! plain Rust over plain data so the XDP program and the model share it.

use crate::{
    allow::AllowEntry,
    flow::{FlowEntry, FlowKey, FlowUpdate, Segment},
    knock::{self, Attempt},
    maps::{Counter, port_flags},
    proto::{Proto, is_attempt},
    source::SourceKey,
    spa::{self, SpaMaps},
};

/// XDP verdicts (from `enum xdp_action` in the kernel's uapi).
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// A TCP or UDP packet whose ports the parser found, and what the
/// decision may read of it. The protocol and the destination port come
/// with the parse; everything else is read from the frame only on the path
/// that needs it, so unrelated traffic pays for none of it. A read that
/// fails (it cannot, after the parse, but the program must check) drops
/// the packet as malformed.
pub trait Transport {
    fn proto(&self) -> Proto;
    fn dport(&self) -> u16;
    fn source(&self) -> Option<SourceKey>;
    fn sport(&self) -> Option<u16>;
    /// The TCP flags (0 for UDP).
    fn tcp_flags(&self) -> Option<u8>;
    /// The TCP header's flags and sequence space (all zero for UDP).
    fn segment(&self) -> Option<Segment>;
    /// UDP: the payload's length, from the UDP header (0 for TCP).
    fn udp_payload_len(&self) -> Option<u16>;
    /// Copies the UDP payload (of exactly an SPA datagram's size) and the
    /// address it was sent to into `scratch`; false when the frame is too
    /// short.
    fn read_spa(&self, scratch: &mut spa::Scratch) -> bool;
}

/// What the parser made of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed<T> {
    /// Cannot carry a TCP or UDP header to us (ARP, ICMP, a non-first
    /// fragment, ...): passes untouched.
    Unrelated,
    /// Could carry TCP or UDP, but its transport header cannot be located or is
    /// truncated. We cannot tell whether it is for a protected port, so it drops.
    Malformed,
    Transport(T),
}

/// The maps the decision reads, behind a trait so the same decision runs on
/// BPF maps in the kernel and on plain collections in the model.
pub trait Maps: SpaMaps {
    /// The [`port_flags`](crate::maps::port_flags) of `port`.
    fn port_flags(&self, port: u16) -> u32;
    /// True when `src` lies in an always-allowed network.
    fn in_allowed_network(&self, src: &SourceKey) -> bool;
    /// True when any always-allowed network is installed.
    fn has_allowed_networks(&self) -> bool;
    /// False only when `src` holds neither an allow entry nor a flow: the
    /// [admission filter](crate::filter). May be true for any source.
    fn may_be_admitted(&self, src: &SourceKey) -> bool;
    /// Runs `f` on the live entry of `key`, in place.
    fn update_flow<R>(&self, key: &FlowKey, f: impl FnOnce(&mut FlowEntry) -> R) -> Option<R>;
    fn insert_flow(&self, key: &FlowKey, entry: &FlowEntry);
}

/// A verdict and the counter that records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub action: u32,
    pub counter: Counter,
}

impl Decision {
    const fn new(action: u32, counter: Counter) -> Self {
        Self { action, counter }
    }
}

/// The two clocks the decision reads.
pub trait Clocks {
    /// CLOCK_BOOTTIME ns: allow deadlines, knock timeouts, SPA times. It
    /// keeps counting across suspend, so a window never outlives its
    /// wall-clock length.
    fn boot_ns(&self) -> u64;
    /// CLOCK_MONOTONIC_COARSE ns: the times of flows only. Every packet of
    /// every admitted session reads it, and it costs no hardware read (the
    /// boot clock costs about 35 ns a packet in a VM). A tick's resolution
    /// is plenty for idle timeouts; a flow's idle time does not count time
    /// the host spent suspended.
    fn flow_ns(&self) -> u64;
}

/// One time for both clocks: what the model's tests use.
impl<F: Fn() -> u64> Clocks for F {
    fn boot_ns(&self) -> u64 {
        self()
    }
    fn flow_ns(&self) -> u64 {
        self()
    }
}

/// Reads each clock at most once per packet, and only when needed.
///
/// `repr(C)` with the (zero-sized, in the program) clocks first: the
/// program's BTF describes this type (a path function takes it), and the
/// kernel refuses a member placed at the very end of a struct, which Rust's
/// own layout does.
#[repr(C)]
struct Now<C: Clocks> {
    clocks: C,
    boot: Option<u64>,
    flow: Option<u64>,
}

impl<C: Clocks> Now<C> {
    #[inline(always)]
    fn boot(&mut self) -> u64 {
        *self.boot.get_or_insert_with(|| self.clocks.boot_ns())
    }

    #[inline(always)]
    fn flow(&mut self) -> u64 {
        *self.flow.get_or_insert_with(|| self.clocks.flow_ns())
    }
}

/// Decides the fate of a parsed packet. Unrelated traffic costs one array
/// load (the port's flags); the clocks and the hash maps are only touched for
/// datagrams to SPA ports, attempts in a knock space and packets to
/// protected ports from sources that may have been admitted.
#[inline(always)]
pub fn decide<M: Maps, T: Transport>(maps: &M, parsed: Parsed<T>, clocks: impl Clocks) -> Decision {
    let malformed = Decision::new(XDP_DROP, Counter::DroppedMalformed);
    match parsed {
        Parsed::Unrelated => Decision::new(XDP_PASS, Counter::Passed),
        Parsed::Malformed => malformed,
        Parsed::Transport(pkt) => transport(maps, &pkt, clocks).unwrap_or(malformed),
    }
}

/// [`decide`] for a TCP or UDP packet; `None` when a header read fails.
#[inline(always)]
fn transport<M: Maps, T: Transport>(maps: &M, pkt: &T, clocks: impl Clocks) -> Option<Decision> {
    let (proto, dport) = (pkt.proto(), pkt.dport());
    let flags = maps.port_flags(dport);
    if flags == 0 {
        return Some(Decision::new(XDP_PASS, Counter::Passed));
    }
    let mut now = Now { clocks, boot: None, flow: None };
    let src = pkt.source()?;
    let is_protected = flags & proto.protected_flag() != 0;
    if flags & (proto.knock_space_flag() | port_flags::SPA_UDP) == 0 {
        return if is_protected {
            admission(maps, &src, || arrival(pkt, src), &mut now)
        } else {
            Some(Decision::new(XDP_PASS, Counter::Passed))
        };
    }

    // A knock or SPA port (protected too only when forced: then decided
    // as protected first, and followed after). The frame is read before
    // the first call, so nothing of its layout stays live across calls:
    // the verifier would walk them once for every layout the parse takes.
    let attempt = flags & proto.knock_space_flag() != 0 && is_attempt(proto, pkt.tcp_flags()?);
    let datagram = proto == Proto::Udp
        && flags & port_flags::SPA_UDP != 0
        && usize::from(pkt.udp_payload_len()?) == spa::DATAGRAM_LEN;
    let datagram_read =
        datagram && maps.with_scratch(|scratch| pkt.read_spa(scratch)) == Some(true);
    let decision = if is_protected {
        Some(admission(maps, &src, || arrival(pkt, src), &mut now)?)
    } else {
        None
    };
    let counter = if datagram {
        // Like a knock, checked and never decided on: valid or not, the
        // datagram goes on to the host like any other.
        if datagram_read {
            spa_datagram(maps, &src, &mut now);
        }
        Counter::Spa
    } else if attempt {
        // Followed, never decided on: the packet goes on to the host, which
        // answers it exactly as it answers every other closed port.
        match knock::on_attempt(maps, &src, proto, dport, now.boot()) {
            Attempt::Ignored => Counter::KnockLimited,
            _ => Counter::Knock,
        }
    } else {
        Counter::Passed
    };
    Some(decision.unwrap_or(Decision::new(XDP_PASS, counter)))
}

/// The flow a packet to a protected port belongs to, and its TCP segment
/// (all zero for UDP: an `Option` would hand the program's verifier an
/// uninitialized value to copy).
#[inline(always)]
fn arrival<T: Transport>(pkt: &T, src: SourceKey) -> Option<(FlowKey, Segment)> {
    let key = FlowKey::new(src, pkt.sport()?, pkt.dport(), pkt.proto());
    let tcp = match pkt.proto() {
        Proto::Tcp => pkt.segment()?,
        Proto::Udp => Segment::default(),
    };
    Some((key, tcp))
}

/// A packet from `src` to a protected port. A stranger's ends at the
/// filter, after one array load, unless always-allowed networks are
/// installed: then only the trie walk is left. Only then is the rest of
/// the packet read.
#[inline(always)]
fn admission<M: Maps, C: Clocks>(
    maps: &M,
    src: &SourceKey,
    arrival: impl FnOnce() -> Option<(FlowKey, Segment)>,
    now: &mut Now<C>,
) -> Option<Decision> {
    let known = maps.may_be_admitted(src);
    if !known && !maps.has_allowed_networks() {
        return Some(Decision::new(XDP_DROP, Counter::DroppedProtected));
    }
    let (key, segment) = arrival()?;
    Some(protected(maps, &key, segment, known, now))
}

/// The datagram in this CPU's scratch, checked. A function of its own in
/// the program, like each path of the decision: inlined together they would
/// not fit the verifier's 512 bytes of stack.
#[cfg_attr(target_arch = "bpf", inline(never))]
#[cfg_attr(not(target_arch = "bpf"), inline(always))]
fn spa_datagram<M: Maps, C: Clocks>(maps: &M, src: &SourceKey, now: &mut Now<C>) {
    maps.with_scratch(|scratch| spa::on_datagram(maps, src, scratch, || now.boot()));
}

/// A packet to a protected port (`segment` is ignored for UDP): an open flow, an
/// allowed source or an always-allowed network lets it through; nothing
/// else does. Flows and allow entries are only looked up for a `known`
/// source (one the filter holds). A function of its own in the program
/// (see `spa_datagram`).
#[cfg_attr(target_arch = "bpf", inline(never))]
#[cfg_attr(not(target_arch = "bpf"), inline(always))]
fn protected<M: Maps, C: Clocks>(
    maps: &M,
    key: &FlowKey,
    segment: Segment,
    known: bool,
    now: &mut Now<C>,
) -> Decision {
    let tcp = (key.proto == Proto::Tcp.number()).then_some(segment);
    // An always-allowed network is looked up again for every packet and
    // opens no flow: anyone can forge its addresses, and flows forged from
    // a whole network would evict the sessions of admitted clients.
    if !known {
        return match maps.in_allowed_network(&key.src) {
            true => Decision::new(XDP_PASS, Counter::PassedNetwork),
            false => Decision::new(XDP_DROP, Counter::DroppedProtected),
        };
    }
    // Most packets to a protected port belong to a flow admitted earlier:
    // it keeps passing after the open window, for as long as it is active.
    // One lookup finds it and refreshes it in place.
    let Some(settings) = maps.settings() else {
        return Decision::new(XDP_DROP, Counter::DroppedProtected);
    };
    let update = maps.update_flow(key, |entry| {
        let update = entry.on_packet(tcp, now.flow(), settings);
        if let FlowUpdate::Counted(next) = update {
            *entry = next;
        }
        update
    });
    let foreign = match update {
        Some(FlowUpdate::Counted(_) | FlowUpdate::Uncounted) => {
            return Decision::new(XDP_PASS, Counter::PassedFlow);
        }
        Some(FlowUpdate::Foreign) => true,
        Some(FlowUpdate::Dead) | None => false,
    };

    let (counter, client) = match maps.allowed(&key.src) {
        // The kernel enforces the deadline itself: userspace may sweep late.
        Some(AllowEntry { deadline_ns, client, .. }) if now.boot() < deadline_ns => {
            (Counter::PassedAllowed, client)
        }
        _ if maps.in_allowed_network(&key.src) => (Counter::PassedNetwork, 0),
        _ => return Decision::new(XDP_DROP, Counter::DroppedProtected),
    };
    // A new connection on the 4-tuple of a live one never replaces it: that
    // would let a spoofed SYN reset the live flow's sequence tracking.
    if !foreign
        && counter == Counter::PassedAllowed
        && let Some(settings) = maps.settings()
    {
        maps.insert_flow(key, &FlowEntry::opened(now.flow(), client, tcp, settings));
    }
    Decision::new(XDP_PASS, counter)
}

#[cfg(test)]
mod tests;
