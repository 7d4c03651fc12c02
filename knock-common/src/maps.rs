//! The maps: names, bounds, per-port flags, settings, counters. The keys and
//! values live with the rules that use them (`flow`, `allow`, `trie`, `event`).

use bytemuck::{Pod, Zeroable};

/// Name of the XDP program inside the object.
pub const PROGRAM_NAME: &str = "knock";

/// Per-port flags ([`port_flags`]), an array indexed by destination port.
pub const MAP_PORT_FLAGS: &str = "PORT_FLAGS";
/// Allowed sources (LRU): [`SourceKey`](crate::source::SourceKey) → [`AllowEntry`](crate::allow::AllowEntry).
pub const MAP_ALLOW: &str = "ALLOW";
/// Always-allowed networks (longest-prefix match): [`NetKey`](crate::source::NetKey) → `u32` (unused).
pub const MAP_ALLOW_NETS: &str = "ALLOW_NETS";
/// Admitted flows (LRU): [`FlowKey`](crate::flow::FlowKey) → [`FlowEntry`](crate::flow::FlowEntry).
pub const MAP_FLOWS: &str = "FLOWS";
/// Per-CPU decision counters, indexed by [`Counter`].
pub const MAP_COUNTERS: &str = "COUNTERS";
/// The knock trie: [`EdgeKey`](crate::trie::EdgeKey) → [`Edge`](crate::trie::Edge).
pub const MAP_KNOCK_EDGES: &str = "KNOCK_EDGES";
/// Installed sequences, an array indexed by sequence index → [`SequenceInfo`](crate::trie::SequenceInfo).
pub const MAP_SEQUENCES: &str = "SEQUENCES";
/// Knocks in progress (LRU): [`SourceKey`](crate::source::SourceKey) → [`KnockState`](crate::trie::KnockState).
pub const MAP_KNOCK_STATE: &str = "KNOCK_STATE";
/// Sequences already used to open the door: [`UsedKey`](crate::trie::UsedKey) → boot ns of the use.
pub const MAP_USED: &str = "USED";
/// Failed knocks per source prefix (LRU): [`PrefixKey`](crate::source::PrefixKey) → GCRA time (see `limit`).
pub const MAP_MISSES: &str = "MISSES";
/// One [`Settings`], written by userspace before attaching.
pub const MAP_SETTINGS: &str = "SETTINGS";
/// Clients' SPA keys, an array indexed by client index → [`SpaKey`](crate::spa::SpaKey).
pub const MAP_SPA_KEYS: &str = "SPA_KEYS";
/// SPA nonces seen (LRU): [`NonceKey`](crate::spa::NonceKey) → boot ns.
pub const MAP_SPA_NONCES: &str = "SPA_NONCES";
/// Per-CPU room for checking one SPA datagram: [`Scratch`](crate::spa::Scratch).
pub const MAP_SPA_SCRATCH: &str = "SPA_SCRATCH";
/// Words the program and the daemon keep between packets, by [`Runtime`].
pub const MAP_RUNTIME: &str = "RUNTIME";
/// The [admission filter](crate::filter): [`filter::WORDS`](crate::filter::WORDS)
/// `u64` words, memory-mapped by the daemon.
pub const MAP_ADMIT_FILTER: &str = "ADMIT_FILTER";
/// Ring buffer of [`Event`](crate::event::Event)s for the daemon.
pub const MAP_EVENTS: &str = "EVENTS";

/// Every map the object must expose; a test checks the loaded object against it.
pub const ALL_MAPS: [&str; 17] = [
    MAP_PORT_FLAGS,
    MAP_ALLOW,
    MAP_ALLOW_NETS,
    MAP_FLOWS,
    MAP_COUNTERS,
    MAP_KNOCK_EDGES,
    MAP_SEQUENCES,
    MAP_KNOCK_STATE,
    MAP_USED,
    MAP_MISSES,
    MAP_SPA_KEYS,
    MAP_SPA_NONCES,
    MAP_SPA_SCRATCH,
    MAP_SETTINGS,
    MAP_RUNTIME,
    MAP_ADMIT_FILTER,
    MAP_EVENTS,
];

/// One entry per possible port, so "is this port protected, is it in a knock
/// space" is a single array load on the hot path instead of a hash lookup.
pub const PORT_COUNT: u32 = 1 << 16;
/// Always-allowed networks.
pub const ALLOW_NETS_MAX_ENTRIES: u32 = 1024;
/// Slots s-1, s and s+1 are accepted; s+2 is installed ahead so that the
/// kernel never waits for userspace at a slot boundary.
pub const SLOTS_PER_CLIENT: u32 = 4;
/// Longest sequence.
pub const MAX_KNOCK_STEPS: u32 = 16;
/// Bytes of the event ring buffer.
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// How much the maps hold: set from the config file at load time, so a
/// small machine locks little memory and a fleet server can follow
/// thousands of clients. The program is built with [`Limits::DEFAULT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Clients, each with [`SLOTS_PER_CLIENT`] sequences installed. At most
    /// 65,536: an SPA datagram names its client's index in 16 bits.
    pub clients: u32,
    /// Open flows followed at once. An LRU: when full, the flow idle the
    /// longest makes room; active flows are never the ones evicted first.
    pub flows: u32,
    /// Allowed sources. An LRU: a new knock always gets a slot, taking the
    /// least recently used entry's (usually one whose window ended before
    /// the sweep reached it). Open flows do not depend on it.
    pub allowed_sources: u32,
    /// Sources with a knock in progress. An LRU: a flood of first knocks
    /// evicts the oldest attempts, never an allowed source; a real knock
    /// takes tens of ms, so this many first knocks must arrive within them.
    pub knocks_in_progress: u32,
    /// Source prefixes whose failed knocks are counted. An LRU, so it is
    /// never full; see `limit` for why eviction buys an attacker nothing.
    pub failed_knock_sources: u32,
    /// Nonces of verified SPA datagrams, remembered for the skew window
    /// (±30 s): valid datagrams a minute, at most.
    pub spa_nonces: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        clients: 1024,
        flows: 65_536,
        allowed_sources: 16_384,
        knocks_in_progress: 65_536,
        failed_knock_sources: 16_384,
        spa_nonces: 16_384,
    };

    /// Most clients an SPA datagram can name.
    pub const MAX_CLIENTS: u32 = 1 << 16;

    /// Sequence indexes: `client index * SLOTS_PER_CLIENT + slot % SLOTS_PER_CLIENT`.
    pub const fn sequences(&self) -> u32 {
        self.clients * SLOTS_PER_CLIENT
    }

    /// Trie edges: room for every sequence at the default length of 4 with
    /// no prefix shared. Longer sequences share the room.
    pub const fn knock_edges(&self) -> u32 {
        self.sequences() * 4
    }

    /// Used (client, slot) records, kept while their slot is accepted.
    pub const fn used(&self) -> u32 {
        self.sequences() * 2
    }

    /// Every sized map's name and entries.
    pub const fn map_sizes(&self) -> [(&'static str, u32); 10] {
        [
            (MAP_SEQUENCES, self.sequences()),
            (MAP_KNOCK_EDGES, self.knock_edges()),
            (MAP_USED, self.used()),
            (MAP_SPA_KEYS, self.clients),
            (MAP_FLOWS, self.flows),
            (MAP_ALLOW, self.allowed_sources),
            (MAP_KNOCK_STATE, self.knocks_in_progress),
            (MAP_MISSES, self.failed_knock_sources),
            (MAP_SPA_NONCES, self.spa_nonces),
            (MAP_ALLOW_NETS, ALLOW_NETS_MAX_ENTRIES),
        ]
    }
}

/// The sizes the program is built with (those of [`Limits::DEFAULT`]).
pub const MAX_CLIENTS: u32 = Limits::DEFAULT.clients;
pub const MAX_SEQUENCES: u32 = Limits::DEFAULT.sequences();
pub const KNOCK_EDGES_MAX_ENTRIES: u32 = Limits::DEFAULT.knock_edges();
pub const USED_MAX_ENTRIES: u32 = Limits::DEFAULT.used();
pub const FLOWS_MAX_ENTRIES: u32 = Limits::DEFAULT.flows;
pub const ALLOW_MAX_ENTRIES: u32 = Limits::DEFAULT.allowed_sources;
pub const KNOCK_STATE_MAX_ENTRIES: u32 = Limits::DEFAULT.knocks_in_progress;
pub const MISSES_MAX_ENTRIES: u32 = Limits::DEFAULT.failed_knock_sources;
pub const SPA_NONCES_MAX_ENTRIES: u32 = Limits::DEFAULT.spa_nonces;

/// Bits of a [`MAP_PORT_FLAGS`] entry.
pub mod port_flags {
    /// TCP packets to this port need an allowed source.
    pub const PROTECTED_TCP: u32 = 1 << 0;
    /// UDP packets to this port need an allowed source.
    pub const PROTECTED_UDP: u32 = 1 << 1;
    /// The port lies in some client's TCP knock space: a SYN to it may
    /// be a knock, and may end one in progress.
    pub const KNOCK_SPACE_TCP: u32 = 1 << 2;
    /// The same for UDP datagrams.
    pub const KNOCK_SPACE_UDP: u32 = 1 << 3;
    /// The port lies in some client's SPA range: a UDP datagram of the
    /// right size to it is checked as a single-packet authorization.
    pub const SPA_UDP: u32 = 1 << 4;
}

/// The daemon's settings, one entry in [`MAP_SETTINGS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Settings {
    /// How long a source that completed a sequence may open new connections.
    pub open_window_ns: u64,
    /// How long a whole sequence may take.
    pub knock_timeout_ns: u64,
    /// How long an admitted flow lives without a packet.
    pub idle_timeout_ns: u64,
    /// How long a TCP flow still passes after a FIN or RST from the client,
    /// for the closing handshake.
    pub close_grace_ns: u64,
    /// A source prefix earns one failed knock per interval (0: no limit)...
    pub miss_interval_ns: u64,
    /// ...and may save up this many intervals' worth (burst × interval).
    pub miss_burst_ns: u64,
    /// The same for all sources together; past it, every failed knock costs
    /// its prefix the whole burst.
    pub global_miss_interval_ns: u64,
    pub global_miss_burst_ns: u64,
    /// How far an SPA datagram's time may be from the server's.
    pub spa_skew_secs: u64,
}

/// The words of [`MAP_RUNTIME`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// GCRA time of the global failed-knock limit.
    GlobalMisses = 0,
    /// UNIX time minus boot time, in ns: the daemon keeps it current, so
    /// the program can check an SPA datagram's clock.
    UnixOffset = 1,
    /// UNIX seconds: SPA datagrams sent earlier are refused. Set when the
    /// maps are created, because they remember no nonce from before.
    SpaNotBefore = 2,
    /// The half of the admission filter the program reads (0 or 1).
    FilterHalf = 3,
    /// How many always-allowed networks are installed: while none is, the
    /// program skips the trie.
    Networks = 4,
}

impl Runtime {
    pub const COUNT: u32 = 5;
}

impl Settings {
    /// The failed-knock limit of one source prefix.
    #[inline(always)]
    pub const fn miss_rate(&self) -> crate::limit::Rate {
        crate::limit::Rate { interval_ns: self.miss_interval_ns, burst_ns: self.miss_burst_ns }
    }

    /// The failed-knock limit of all sources together.
    #[inline(always)]
    pub const fn global_miss_rate(&self) -> crate::limit::Rate {
        crate::limit::Rate {
            interval_ns: self.global_miss_interval_ns,
            burst_ns: self.global_miss_burst_ns,
        }
    }
}

/// The per-CPU counters, one slot each in [`MAP_COUNTERS`]. Every packet
/// moves exactly one.
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
    /// A connection attempt in a knock space: followed, then passed to the
    /// host, which answers it as it answers any closed port.
    Knock = 4,
    /// To a protected port on an open flow: passed.
    PassedFlow = 5,
    /// To a protected port from an always-allowed network: passed.
    PassedNetwork = 6,
    /// An attempt in a knock space from a source prefix over its failed-knock
    /// limit: ignored, then passed like any other.
    KnockLimited = 7,
    /// A datagram of SPA size to an SPA port: checked, then passed to the
    /// host like any datagram to a closed port, valid or not.
    Spa = 8,
}

impl Counter {
    pub const ALL: [Counter; 9] = [
        Counter::Passed,
        Counter::DroppedProtected,
        Counter::PassedAllowed,
        Counter::DroppedMalformed,
        Counter::Knock,
        Counter::PassedFlow,
        Counter::PassedNetwork,
        Counter::KnockLimited,
        Counter::Spa,
    ];
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Stable name used in `status` output and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Passed => "passed",
            Counter::DroppedProtected => "dropped_protected",
            Counter::PassedAllowed => "passed_allowed",
            Counter::DroppedMalformed => "dropped_malformed",
            Counter::Knock => "knock",
            Counter::PassedFlow => "passed_flow",
            Counter::PassedNetwork => "passed_network",
            Counter::KnockLimited => "knock_limited",
            Counter::Spa => "spa",
        }
    }
}
