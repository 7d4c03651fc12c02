//! Allowed sources: who may open new connections to protected ports, and until when.

use bytemuck::{Pod, Zeroable};

/// Why a source is in the allow map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllowOrigin {
    /// Put there by `knock-xdp allow`.
    Manual = 1,
    /// Completed a knock sequence.
    Knock = 2,
    /// Sent a valid single-packet authorization.
    Spa = 3,
}

impl AllowOrigin {
    pub const fn from_u32(value: u32) -> Option<Self> {
        match value {
            1 => Some(AllowOrigin::Manual),
            2 => Some(AllowOrigin::Knock),
            3 => Some(AllowOrigin::Spa),
            _ => None,
        }
    }

    /// Stable name used in `list` output.
    pub const fn name(self) -> &'static str {
        match self {
            AllowOrigin::Manual => "manual",
            AllowOrigin::Knock => "knock",
            AllowOrigin::Spa => "spa",
        }
    }
}

/// An allowed source. The kernel compares `deadline_ns` with
/// `bpf_ktime_get_boot_ns()` on every lookup, so an expired entry never admits a
/// packet even when userspace has not swept it yet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct AllowEntry {
    /// CLOCK_BOOTTIME nanoseconds after which the entry admits nothing.
    pub deadline_ns: u64,
    /// An [`AllowOrigin`].
    pub origin: u32,
    /// The client whose knock or datagram admitted the source (0 for manual entries).
    pub client: u32,
}

impl AllowEntry {
    /// Whether the entry still admits new connections at `now_ns`.
    #[inline(always)]
    pub const fn admits(&self, now_ns: u64) -> bool {
        now_ns < self.deadline_ns
    }

    /// The entry to store when `self` is granted over `old`: a grant never
    /// shortens a longer window already in force (say, a manual allow for an
    /// hour), and then the older entry stays whole.
    #[inline(always)]
    pub fn granted_over(self, old: Option<AllowEntry>) -> Option<AllowEntry> {
        match old {
            Some(old) if old.deadline_ns >= self.deadline_ns => None,
            _ => Some(self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_never_shortens_a_window() {
        let long = AllowEntry { deadline_ns: 100, origin: AllowOrigin::Manual as u32, client: 0 };
        let short = AllowEntry { deadline_ns: 50, origin: AllowOrigin::Knock as u32, client: 7 };
        assert_eq!(short.granted_over(Some(long)), None);
        assert_eq!(long.granted_over(Some(short)), Some(long));
        assert_eq!(short.granted_over(None), Some(short));
        assert!(long.admits(99) && !long.admits(100));
    }
}
