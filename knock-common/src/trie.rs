//! The installed sequences as a trie of knock prefixes, and the one builder
//! that turns sequences into map entries.
//!
//! Every prefix of an installed sequence is a node; an edge
//! (node, protocol, port) → child says where a knock on that port leads. A
//! source's knock state is the node it has reached, so one knock costs one
//! state lookup and one edge lookup, whatever the number of clients.
//! Sequences that share a prefix (clients whose ports collide) share its
//! edges, so the walk stays deterministic; an edge that ends sequences lists
//! them, and completion tries each in turn.

use bytemuck::{Pod, Zeroable};

use crate::proto::Proto;

/// The node every knock starts from.
pub const ROOT: u32 = 0;
/// Sequences that may end on one edge: identical sequences of different
/// clients (or slots). Completion tries them in turn, so the loop is bounded
/// for the verifier.
pub const MAX_FINISHERS: usize = 4;
/// The `slot` of a static sequence: it never rotates, so single use does not apply.
pub const STATIC_SLOT: u64 = u64::MAX;

/// "Where does a knock on this port lead from this node?"
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct EdgeKey {
    pub node: u32,
    pub port: u16,
    /// [`Proto::number`].
    pub proto: u8,
    pub _pad: u8,
}

impl EdgeKey {
    pub const fn new(node: u32, proto: Proto, port: u16) -> Self {
        Self { node, port, proto: proto.number(), _pad: 0 }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Edge {
    /// The node reached.
    pub child: u32,
    /// One sequence through this edge (its index + 1), to name a client in
    /// the events of a knock in progress.
    pub via: u32,
    /// Sequences that end here (index + 1; 0 marks an empty place).
    pub finishes: [u32; MAX_FINISHERS],
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

/// A source's progress through the trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct KnockState {
    /// Boot ns of the first knock; the whole sequence must fit in the timeout.
    pub started_ns: u64,
    /// The node reached, or [`KnockState::DONE`] once a sequence completed
    /// (or was refused): the state then only absorbs retransmissions.
    pub node: u32,
    /// The port knocked last: a retransmitted SYN to it is not a new knock.
    pub last_port: u16,
    pub last_proto: u8,
    /// Knocks matched so far.
    pub step: u8,
    /// The `via` of the last edge taken, for events.
    pub via: u32,
    pub _pad: u32,
}

impl KnockState {
    pub const DONE: u32 = u32::MAX;
}

/// Single use: a completed (client, slot) sequence.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct UsedKey {
    pub client: u32,
    pub _pad: u32,
    pub slot: u64,
}

#[cfg(any(test, feature = "std"))]
mod builder;
#[cfg(any(test, feature = "std"))]
pub use builder::{InstallError, KnockSink, KnockTable};
