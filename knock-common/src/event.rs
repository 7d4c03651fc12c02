//! What the program tells the daemon through the ring buffer.

use bytemuck::{Pod, Zeroable};

use crate::source::SourceKey;

/// What happened to a knock. Steps that only go on are not told: an
/// event costs a knock step more than the rest of it, and the end of an
/// attempt (opened, reset, timed out) names the step it reached.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    /// A sequence completed and the source was admitted.
    Opened = 2,
    /// A sequence completed but had been used already.
    Replay = 3,
    /// A packet that does not continue the sequence ended the attempt.
    Reset = 4,
    /// The attempt took longer than the knock timeout.
    Timeout = 5,
    /// The sequence completed outside the validity of its slot.
    Stale = 6,
    /// Completed, but the allow map was full.
    AllowFull = 7,
    /// The source's prefix used up its failed-knock budget: its knocks are
    /// ignored for a while.
    Limited = 8,
    /// A single-packet authorization verified; the source (or the address
    /// it named) was admitted. `slot` holds the datagram's UNIX time.
    SpaOpened = 9,
    /// A verified datagram whose nonce was seen before.
    SpaReplay = 10,
}

impl EventKind {
    pub const ALL: [EventKind; 9] = [
        EventKind::Opened,
        EventKind::Replay,
        EventKind::Reset,
        EventKind::Timeout,
        EventKind::Stale,
        EventKind::AllowFull,
        EventKind::Limited,
        EventKind::SpaOpened,
        EventKind::SpaReplay,
    ];

    pub fn from_u32(value: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| *kind as u32 == value)
    }

    /// Stable name used in logs, the audit trail and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            EventKind::Opened => "opened",
            EventKind::Replay => "replay",
            EventKind::Reset => "reset",
            EventKind::Timeout => "timeout",
            EventKind::Stale => "stale",
            EventKind::AllowFull => "allow_full",
            EventKind::Limited => "limited",
            EventKind::SpaOpened => "spa_opened",
            EventKind::SpaReplay => "spa_replay",
        }
    }

    /// An admission, by knock or SPA: the audit trail must never lose one.
    pub const fn is_opening(self) -> bool {
        matches!(self, EventKind::Opened | EventKind::SpaOpened)
    }

    /// Refusals are what anybody can cause at will (a spoofed first knock
    /// followed by any packet is a reset): they are logged on a budget, and
    /// may fill the ring buffer only halfway so an opening always finds room.
    pub const fn is_refusal(self) -> bool {
        !self.is_opening()
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Event {
    /// An [`EventKind`].
    pub kind: u32,
    /// The client's id when known (0 otherwise).
    pub client: u32,
    /// The slot of the sequence when known.
    pub slot: u64,
    pub source: SourceKey,
    /// Knocks matched when the event happened.
    pub step: u32,
}

impl Event {
    /// [`EventKind::is_opening`] of the raw kind, as the program tests it
    /// (a test checks the two agree).
    #[inline(always)]
    pub fn is_opening(&self) -> bool {
        self.kind == EventKind::Opened as u32 || self.kind == EventKind::SpaOpened as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_have_distinct_names() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_u32(kind as u32), Some(kind));
            assert_eq!(EventKind::ALL.iter().filter(|k| k.name() == kind.name()).count(), 1);
        }
        assert_eq!(EventKind::from_u32(0), None);
    }

    #[test]
    fn events_and_kinds_agree_on_what_is_an_opening() {
        for kind in EventKind::ALL {
            let event = Event { kind: kind as u32, ..Zeroable::zeroed() };
            assert_eq!(event.is_opening(), kind.is_opening(), "{kind:?}");
        }
    }
}
