//! Map names, keys and values: the contract between the XDP program and userspace.

use bytemuck::{Pod, Zeroable};

/// Name of the XDP program inside the object.
pub const PROGRAM_NAME: &str = "knock";

/// Per-port flags ([`port_flags`]), an array indexed by destination port.
pub const MAP_PORT_FLAGS: &str = "PORT_FLAGS";
/// Allowed sources: [`SourceKey`] → [`AllowEntry`].
pub const MAP_ALLOW: &str = "ALLOW";
/// Per-CPU decision counters, indexed by [`Counter`].
pub const MAP_COUNTERS: &str = "COUNTERS";
/// Installed knock steps: [`StepKey`] → [`StepEntry`].
pub const MAP_KNOCK_STEPS: &str = "KNOCK_STEPS";
/// Installed sequences, an array indexed by sequence index → [`SequenceInfo`].
pub const MAP_SEQUENCES: &str = "SEQUENCES";
/// Knocks in progress (LRU): [`SourceKey`] → [`KnockState`].
pub const MAP_KNOCK_STATE: &str = "KNOCK_STATE";
/// Sequences already used to open the door: [`UsedKey`] → boot ns of the use.
pub const MAP_USED: &str = "USED";
/// One [`Config`], written by userspace before attaching.
pub const MAP_CONFIG: &str = "CONFIG";
/// One `u64`: boot ns until which a knock may still be in progress anywhere.
pub const MAP_KNOCK_ACTIVE: &str = "KNOCK_ACTIVE";
/// Ring buffer of [`Event`]s for the daemon.
pub const MAP_EVENTS: &str = "EVENTS";
/// Admitted flows (LRU): [`FlowKey`] → [`FlowEntry`].
pub const MAP_FLOWS: &str = "FLOWS";
/// Always-allowed networks (longest-prefix match): [`NetKey`] → `u32` (unused).
pub const MAP_ALLOW_NETS: &str = "ALLOW_NETS";

/// Every map the object must expose; a test checks the loaded object against it.
pub const ALL_MAPS: [&str; 12] = [
    MAP_PORT_FLAGS,
    MAP_ALLOW,
    MAP_COUNTERS,
    MAP_KNOCK_STEPS,
    MAP_SEQUENCES,
    MAP_KNOCK_STATE,
    MAP_USED,
    MAP_CONFIG,
    MAP_KNOCK_ACTIVE,
    MAP_EVENTS,
    MAP_FLOWS,
    MAP_ALLOW_NETS,
];

/// Open flows followed at once. An LRU: when full, the flow idle the
/// longest makes room; active flows are never the ones evicted first.
pub const FLOWS_MAX_ENTRIES: u32 = 262_144;
/// Always-allowed networks.
pub const ALLOW_NETS_MAX_ENTRIES: u32 = 1024;

/// One entry per possible port, so "is this port protected" is a single array
/// load on the hot path instead of a hash lookup.
pub const PORT_COUNT: u32 = 1 << 16;

/// Upper bound of the allow map, an LRU: a new knock always gets a slot,
/// taking the least recently used entry's (usually one whose window ended
/// before the sweep reached it). Open flows do not depend on it.
pub const ALLOW_MAX_ENTRIES: u32 = 65_536;

/// Bits of a [`MAP_PORT_FLAGS`] entry.
pub mod port_flags {
    /// TCP packets to this port need an allowed source.
    pub const PROTECTED_TCP: u32 = 1 << 0;
    /// UDP packets to this port need an allowed source.
    pub const PROTECTED_UDP: u32 = 1 << 1;
    /// Some installed sequence knocks on this port with TCP SYNs.
    pub const KNOCK_TCP: u32 = 1 << 2;
    /// Some installed sequence knocks on this port with UDP datagrams.
    pub const KNOCK_UDP: u32 = 1 << 3;
}

/// Clients the kernel can follow at once. Each has [`SLOTS_PER_CLIENT`]
/// sequences installed, one bit each in a [`Bitmap`].
pub const MAX_CLIENTS: u32 = 64;
/// Slots s-1, s and s+1 are accepted; s+2 is installed ahead so that the
/// kernel never waits for userspace at a slot boundary.
pub const SLOTS_PER_CLIENT: u32 = 4;
/// Sequence indexes: `client index * SLOTS_PER_CLIENT + slot % SLOTS_PER_CLIENT`.
pub const MAX_SEQUENCES: u32 = MAX_CLIENTS * SLOTS_PER_CLIENT;
/// Longest sequence.
pub const MAX_KNOCK_STEPS: u32 = 16;
pub const KNOCK_STEPS_MAX_ENTRIES: u32 = MAX_SEQUENCES * MAX_KNOCK_STEPS;
/// Sources with a knock in progress. An LRU: a flood of first knocks evicts
/// the oldest attempts, never an allowed source (those live in [`MAP_ALLOW`]).
pub const KNOCK_STATE_MAX_ENTRIES: u32 = 65_536;
/// Used (client, slot) pairs; userspace removes those whose slot is over.
pub const USED_MAX_ENTRIES: u32 = MAX_SEQUENCES * 16;
/// Bytes of the event ring buffer.
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// The `slot` of a static sequence: it never rotates, so single use does not apply.
pub const STATIC_SLOT: u64 = u64::MAX;

/// One bit per sequence index.
pub type Bitmap = [u64; (MAX_SEQUENCES / 64) as usize];

/// Protocol numbers as stored in keys.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// "Which sequences knock on this port at this step?"
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct StepKey {
    pub port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// 0-based position in the sequence.
    pub step: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct StepEntry {
    /// Sequences whose step `step` is this port.
    pub continues: Bitmap,
    /// The subset of `continues` for which this is the last step.
    pub finishes: Bitmap,
}

/// One installed sequence.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SequenceInfo {
    /// Boot-clock window in which completing the sequence opens the door.
    /// `valid_until_ns == 0` marks a free or retired index.
    pub valid_from_ns: u64,
    pub valid_until_ns: u64,
    /// The time slot the sequence belongs to, or [`STATIC_SLOT`].
    pub slot: u64,
    /// The client's stable id (from its profile on the server).
    pub client: u32,
    pub length: u32,
}

/// A source's progress through the sequences it may be knocking.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct KnockState {
    /// Sequences still matching every knock so far.
    pub candidates: Bitmap,
    /// Boot ns of the first knock; the whole sequence must fit in the timeout.
    pub started_ns: u64,
    /// Knocks matched so far.
    pub step: u8,
    pub last_proto: u8,
    /// The port knocked last: a retransmitted SYN to it is not a new knock.
    pub last_port: u16,
    /// Non-zero once the sequence completed (or was refused); the state then
    /// only absorbs retransmissions of the final knock.
    pub done: u32,
}

/// Single use: a completed (client, slot) sequence.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct UsedKey {
    pub client: u32,
    pub _pad: u32,
    pub slot: u64,
}

/// The daemon's timing settings, one entry in [`MAP_CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Config {
    /// How long a source that completed a sequence may open new connections.
    pub open_window_ns: u64,
    /// How long a whole sequence may take.
    pub knock_timeout_ns: u64,
    /// How long an admitted flow lives without a packet.
    pub idle_timeout_ns: u64,
    /// How long a TCP flow still passes after a FIN or RST from the client,
    /// for the closing handshake.
    pub close_grace_ns: u64,
}

/// One connection (or UDP exchange) to a protected port, as the client sends it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FlowKey {
    pub src: SourceKey,
    pub src_port: u16,
    pub dst_port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// An admitted flow. It passes while packets keep coming within the idle
/// timeout; a FIN or RST from the client starts the close grace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowEntry {
    /// Boot ns of the client's last packet.
    pub last_seen_ns: u64,
    /// Non-zero once the client sent FIN or RST: boot ns after which the
    /// flow admits nothing more.
    pub closing_until_ns: u64,
}

/// Key of the always-allowed networks trie: the family byte, then the
/// address (IPv4 in the first 4 bytes). The prefix length counts the family
/// byte, so IPv4 and IPv6 prefixes never match each other.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct NetKey {
    pub family: u8,
    pub addr: [u8; 16],
}

impl NetKey {
    pub const fn of(src: &SourceKey) -> Self {
        Self { family: src.family, addr: src.addr }
    }
}

/// What happened to a knock, for the daemon's log.
pub mod event_kind {
    /// A knock matched; `step` knocks so far.
    pub const PROGRESS: u32 = 1;
    /// A sequence completed and the source was admitted.
    pub const OPENED: u32 = 2;
    /// A sequence completed but had been used already.
    pub const REPLAY: u32 = 3;
    /// A packet that does not continue the sequence ended the attempt.
    pub const RESET: u32 = 4;
    /// The attempt took longer than the knock timeout.
    pub const TIMEOUT: u32 = 5;
    /// The sequence completed outside the validity of its slot.
    pub const STALE: u32 = 6;
    /// Completed, but the allow map was full.
    pub const ALLOW_FULL: u32 = 7;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Event {
    /// One of [`event_kind`].
    pub kind: u32,
    /// The client's id when known (0 otherwise).
    pub client: u32,
    /// The slot of the sequence when known.
    pub slot: u64,
    pub source: SourceKey,
    /// Knocks matched when the event happened.
    pub step: u32,
}

/// Address family tags used in [`SourceKey::family`].
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// A source address, IPv4 or IPv6, as one fixed-size map key.
///
/// The family is part of the key so that an IPv4 entry never admits an IPv6
/// packet whose source merely looks like it (`::ffff:a.b.c.d`). IPv4 addresses
/// occupy `addr[..4]`; the rest stays zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct SourceKey {
    pub family: u8,
    pub _pad: [u8; 3],
    pub addr: [u8; 16],
}

impl SourceKey {
    pub const fn v4(octets: [u8; 4]) -> Self {
        let mut addr = [0; 16];
        addr[0] = octets[0];
        addr[1] = octets[1];
        addr[2] = octets[2];
        addr[3] = octets[3];
        Self { family: FAMILY_V4, _pad: [0; 3], addr }
    }

    pub const fn v6(addr: [u8; 16]) -> Self {
        Self { family: FAMILY_V6, _pad: [0; 3], addr }
    }

    /// The address this key stands for, or `None` for a key with an unknown family.
    pub fn ip(&self) -> Option<core::net::IpAddr> {
        match self.family {
            FAMILY_V4 => {
                let [a, b, c, d, ..] = self.addr;
                Some(core::net::Ipv4Addr::new(a, b, c, d).into())
            }
            FAMILY_V6 => Some(core::net::Ipv6Addr::from(self.addr).into()),
            _ => None,
        }
    }
}

impl From<core::net::IpAddr> for SourceKey {
    fn from(ip: core::net::IpAddr) -> Self {
        match ip {
            core::net::IpAddr::V4(v4) => Self::v4(v4.octets()),
            core::net::IpAddr::V6(v6) => Self::v6(v6.octets()),
        }
    }
}

/// Why a source is in the allow map.
pub mod allow_origin {
    /// Put there by `knock-xdp allow`.
    pub const MANUAL: u32 = 1;
    /// Completed a knock sequence.
    pub const KNOCK: u32 = 2;
}

/// An allowed source. The kernel compares `deadline_ns` with
/// `bpf_ktime_get_boot_ns()` on every lookup, so an expired entry never admits a
/// packet even when userspace has not swept it yet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct AllowEntry {
    /// CLOCK_BOOTTIME nanoseconds after which the entry admits nothing.
    pub deadline_ns: u64,
    /// One of [`allow_origin`].
    pub origin: u32,
    /// The client whose sequence admitted the source (0 for manual entries).
    pub client: u32,
}

/// The per-CPU counters, one slot each in [`MAP_COUNTERS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Not addressed to a protected port: passed untouched.
    Passed = 0,
    /// To a protected port from a source that is not allowed: dropped.
    DroppedProtected = 1,
    /// To a protected port from an allowed source: passed.
    PassedAllowed = 2,
    /// Could reach a protected port but could not be parsed: dropped.
    DroppedMalformed = 3,
    /// A knock (a SYN or datagram to a port of an installed sequence): dropped.
    DroppedKnock = 4,
    /// To a protected port on an open flow: passed.
    PassedFlow = 5,
    /// To a protected port from an always-allowed network: passed.
    PassedNetwork = 6,
}

impl Counter {
    pub const ALL: [Counter; 7] = [
        Counter::Passed,
        Counter::DroppedProtected,
        Counter::PassedAllowed,
        Counter::DroppedMalformed,
        Counter::DroppedKnock,
        Counter::PassedFlow,
        Counter::PassedNetwork,
    ];
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Stable name used in `status` output and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Passed => "passed",
            Counter::DroppedProtected => "dropped_protected",
            Counter::PassedAllowed => "passed_allowed",
            Counter::DroppedMalformed => "dropped_malformed",
            Counter::DroppedKnock => "dropped_knock",
            Counter::PassedFlow => "passed_flow",
            Counter::PassedNetwork => "passed_network",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are `#[repr(C)]`, `Copy`, and `bytemuck::Pod` (which proves
    // they have no padding bytes), so any bit pattern is valid.
    unsafe impl aya::Pod for super::SourceKey {}
    unsafe impl aya::Pod for super::AllowEntry {}
    unsafe impl aya::Pod for super::StepKey {}
    unsafe impl aya::Pod for super::StepEntry {}
    unsafe impl aya::Pod for super::SequenceInfo {}
    unsafe impl aya::Pod for super::KnockState {}
    unsafe impl aya::Pod for super::UsedKey {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowEntry {}
    unsafe impl aya::Pod for super::NetKey {}
}
