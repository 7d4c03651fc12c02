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

/// A TCP or UDP packet whose ports the parser could read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src: SourceKey,
    pub proto: Proto,
    pub sport: u16,
    pub dport: u16,
    /// The TCP header's flags and sequence space (all zero for UDP).
    pub tcp: Segment,
    /// UDP: the payload's length, from the UDP header (0 for TCP).
    pub payload_len: u16,
    /// Where the IP and the transport header start in the frame, for the
    /// bytes only SPA reads ([`FrameBytes`]).
    pub ip_at: u16,
    pub l4_at: u16,
}

impl Packet {
    #[inline(always)]
    fn segment(&self) -> Option<Segment> {
        match self.proto {
            Proto::Tcp => Some(self.tcp),
            Proto::Udp => None,
        }
    }
}

/// What the parser made of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Cannot carry a TCP or UDP header to us (ARP, ICMP, a non-first
    /// fragment, ...): passes untouched.
    Unrelated,
    /// Could carry TCP or UDP, but its transport header cannot be located or is
    /// truncated. We cannot tell whether it is for a protected port, so it drops.
    Malformed,
    Transport(Packet),
}

/// What only single-packet authorization reads of a frame, read on demand:
/// the program reads the frame (parse.rs), the model a copy.
pub trait FrameBytes {
    /// Copies the UDP payload of `pkt` (of exactly an SPA datagram's size)
    /// and the address it was sent to into `scratch`; false when the frame
    /// is too short.
    fn read_spa(&self, pkt: &Packet, scratch: &mut spa::Scratch) -> bool;
}

/// The maps the decision reads, behind a trait so the same decision runs on
/// BPF maps in the kernel and on plain collections in the model.
pub trait Maps: SpaMaps {
    /// The [`port_flags`](crate::maps::port_flags) of `port`.
    fn port_flags(&self, port: u16) -> u32;
    /// True when `src` lies in an always-allowed network.
    fn in_allowed_network(&self, src: &SourceKey) -> bool;
    fn flow(&self, key: &FlowKey) -> Option<FlowEntry>;
    fn set_flow(&self, key: &FlowKey, entry: &FlowEntry);
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

/// Reads the clock at most once per packet, and only when needed.
///
/// `repr(C)` with the zero-sized reader first: the program's BTF describes
/// this type (a path function takes it), and the kernel refuses a member
/// placed at the very end of a struct, which Rust's own layout does.
#[repr(C)]
struct Clock<F: Fn() -> u64> {
    read: F,
    now: Option<u64>,
}

impl<F: Fn() -> u64> Clock<F> {
    #[inline(always)]
    fn now(&mut self) -> u64 {
        *self.now.get_or_insert_with(&self.read)
    }
}

/// Decides the fate of a parsed packet. Unrelated traffic costs one array
/// load (the port's flags); the clock and the hash maps are only touched for
/// datagrams to SPA ports, attempts in a knock space and packets to
/// protected ports.
#[inline(always)]
pub fn decide<M: Maps, F: FrameBytes>(
    maps: &M,
    parsed: Parsed,
    frame: &F,
    clock: impl Fn() -> u64,
) -> Decision {
    let pkt = match parsed {
        Parsed::Unrelated => return Decision::new(XDP_PASS, Counter::Passed),
        Parsed::Malformed => return Decision::new(XDP_DROP, Counter::DroppedMalformed),
        Parsed::Transport(pkt) => pkt,
    };
    let mut clock = Clock { read: clock, now: None };
    let flags = maps.port_flags(pkt.dport);

    let mut counter = Counter::Passed;
    if pkt.proto == Proto::Udp
        && flags & port_flags::SPA_UDP != 0
        && usize::from(pkt.payload_len) == spa::DATAGRAM_LEN
    {
        // Like a knock, checked and never decided on: valid or not, the
        // datagram goes on to the host like any other.
        if maps.with_scratch(|scratch| frame.read_spa(&pkt, scratch)) == Some(true) {
            spa_datagram(maps, &pkt.src, clock.now());
        }
        counter = Counter::Spa;
    } else if flags & pkt.proto.knock_space_flag() != 0 && is_attempt(pkt.proto, pkt.tcp.flags) {
        // Followed, never decided on: the packet goes on to the host, which
        // answers it exactly as it answers every other closed port.
        counter = match knock::on_attempt(maps, &pkt.src, pkt.proto, pkt.dport, clock.now()) {
            Attempt::Ignored => Counter::KnockLimited,
            _ => Counter::Knock,
        };
    }
    if flags & pkt.proto.protected_flag() == 0 {
        return Decision::new(XDP_PASS, counter);
    }
    protected(maps, &pkt, &mut clock)
}

/// The datagram in this CPU's scratch, checked. A function of its own in
/// the program, like each path of the decision: inlined together they would
/// not fit the verifier's 512 bytes of stack.
#[cfg_attr(target_arch = "bpf", inline(never))]
#[cfg_attr(not(target_arch = "bpf"), inline(always))]
fn spa_datagram<M: Maps>(maps: &M, src: &SourceKey, now_ns: u64) {
    maps.with_scratch(|scratch| spa::on_datagram(maps, src, scratch, now_ns));
}

/// A packet to a protected port: an open flow, an allowed source or an
/// always-allowed network lets it through; nothing else does. A function of
/// its own in the program (see `spa_datagram`).
#[cfg_attr(target_arch = "bpf", inline(never))]
#[cfg_attr(not(target_arch = "bpf"), inline(always))]
fn protected<M: Maps, F: Fn() -> u64>(maps: &M, pkt: &Packet, clock: &mut Clock<F>) -> Decision {
    let key = FlowKey::new(pkt.src, pkt.sport, pkt.dport, pkt.proto);
    // Most packets to a protected port belong to a flow admitted earlier:
    // it keeps passing after the open window, for as long as it is active.
    // The clock and the settings are read only once an entry is found, so a
    // stranger's packet costs the lookups alone.
    let mut foreign = false;
    if let Some(entry) = maps.flow(&key)
        && let Some(settings) = maps.settings()
    {
        match entry.on_packet(pkt.segment(), clock.now(), settings) {
            FlowUpdate::Counted(next) => {
                maps.set_flow(&key, &next);
                return Decision::new(XDP_PASS, Counter::PassedFlow);
            }
            FlowUpdate::Uncounted => return Decision::new(XDP_PASS, Counter::PassedFlow),
            FlowUpdate::Foreign => foreign = true,
            FlowUpdate::Dead => {}
        }
    }

    let (counter, client) = match maps.allowed(&pkt.src) {
        // The kernel enforces the deadline itself: userspace may sweep late.
        Some(AllowEntry { deadline_ns, client, .. }) if clock.now() < deadline_ns => {
            (Counter::PassedAllowed, client)
        }
        _ if maps.in_allowed_network(&pkt.src) => (Counter::PassedNetwork, 0),
        _ => return Decision::new(XDP_DROP, Counter::DroppedProtected),
    };
    // A new connection on the 4-tuple of a live one never replaces it: that
    // would let a spoofed SYN reset the live flow's sequence tracking.
    if !foreign && let Some(settings) = maps.settings() {
        let entry = FlowEntry::opened(clock.now(), client, pkt.segment(), settings);
        maps.set_flow(&key, &entry);
    }
    Decision::new(XDP_PASS, counter)
}

#[cfg(test)]
mod tests;
