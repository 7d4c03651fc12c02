//! Limits on failed knocks, per source prefix and for the whole host.
//!
//! A failed knock (a *miss*) is a connection attempt in a knock space that
//! neither starts nor continues a knock, or that ends one without opening the
//! door (a reset, a timeout, a replay, a stale sequence). Every wrong guess
//! costs at least one miss; a real client's knock costs none.
//!
//! Each limit is a GCRA (generic cell rate algorithm): one word, the
//! theoretical time of the next miss, which every miss moves on by the
//! interval. A limit is reached while the next miss would land more than
//! `burst` intervals ahead of now; from then on the prefix's attempts are
//! ignored (they still pass to the host, so nothing shows) until time has
//! caught up by one interval.
//!
//! The per-prefix words live in an LRU map, which a flood of spoofed sources
//! can make forget a prefix. That buys an attacker nothing: such a flood is
//! itself thousands of misses, which exhaust the global limit, and while the
//! global limit is exhausted every miss costs its prefix the whole burst, so
//! a forgotten (or brand new) prefix gets one guess per interval, not a burst.

/// A rate: one miss per `interval_ns`, saving up `burst_ns / interval_ns`
/// of them. The burst is given in time (userspace multiplies), so the
/// program needs no 64-bit multiplication, which BPF lacks with overflow checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub interval_ns: u64,
    /// `burst × interval_ns`.
    pub burst_ns: u64,
}

impl Rate {
    pub const fn new(interval_ns: u64, burst: u64) -> Self {
        Self { interval_ns, burst_ns: interval_ns.saturating_mul(burst) }
    }

    /// Whether a miss at `now_ns` would go over the limit.
    #[inline(always)]
    pub const fn exhausted(&self, tat_ns: u64, now_ns: u64) -> bool {
        let tat = if tat_ns > now_ns { tat_ns } else { now_ns };
        tat.saturating_add(self.interval_ns) > now_ns.saturating_add(self.burst_ns)
    }

    /// The word after a miss at `now_ns` (`None`: the prefix had none yet).
    #[inline(always)]
    pub const fn charged(&self, tat_ns: Option<u64>, now_ns: u64) -> u64 {
        let tat = match tat_ns {
            Some(tat) if tat > now_ns => tat,
            _ => now_ns,
        };
        tat.saturating_add(self.interval_ns)
    }

    /// The word after a miss under global pressure: the whole burst at once.
    #[inline(always)]
    pub const fn emptied(&self, now_ns: u64) -> u64 {
        now_ns.saturating_add(self.burst_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000_000_000;

    #[test]
    fn a_burst_then_one_miss_per_interval() {
        let rate = Rate::new(MIN, 8);
        let now = 1000 * MIN;
        let mut tat = None;
        let mut allowed = 0;
        for _ in 0..20 {
            if tat.is_some_and(|t| rate.exhausted(t, now)) {
                continue;
            }
            tat = Some(rate.charged(tat, now));
            allowed += 1;
        }
        assert_eq!(allowed, 8);
        let tat = tat.unwrap();
        assert!(rate.exhausted(tat, now + MIN - 1));
        assert!(!rate.exhausted(tat, now + MIN));
        // One more, then exhausted again.
        let tat = rate.charged(Some(tat), now + MIN);
        assert!(rate.exhausted(tat, now + MIN));
        // A quiet prefix earns its whole burst back.
        assert!(!rate.exhausted(tat, now + 9 * MIN));
    }

    #[test]
    fn under_pressure_one_miss_empties_the_burst() {
        let rate = Rate::new(MIN, 8);
        let tat = rate.emptied(5 * MIN);
        assert!(rate.exhausted(tat, 5 * MIN));
        assert!(rate.exhausted(tat, 6 * MIN - 1));
        assert!(!rate.exhausted(tat, 6 * MIN));
    }

    #[test]
    fn an_interval_of_zero_never_limits() {
        let rate = Rate::new(0, 0);
        let mut tat = None;
        for now in [5, 5, 5, 6] {
            assert!(tat.is_none_or(|t| !rate.exhausted(t, now)));
            tat = Some(rate.charged(tat, now));
        }
    }
}
