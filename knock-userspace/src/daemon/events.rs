//! Logging what the XDP program reports through its ring buffer: one line
//! per opening, refusal, reset or timeout; step-by-step progress at debug.
//!
//! Refusals are what an attacker can produce at will (a spoofed first knock
//! followed by any other packet is a reset), so they are logged and audited
//! up to a budget a second; the rest are counted and summed up in one line.
//! Openings are always logged.

use std::time::{Duration, Instant};

use knock_common::{
    event::{Event, EventKind},
    trie::STATIC_SLOT,
};
use tracing::{info, warn};

use super::Daemon;
use crate::audit;
use crate::duration::format_duration;

impl Daemon {
    pub(super) fn log_event(&mut self, bytes: &[u8]) {
        let Ok(event) = bytemuck::try_pod_read_unaligned::<Event>(bytes) else {
            return warn!(len = bytes.len(), "malformed event from the XDP program");
        };
        let Some(kind) = EventKind::from_u32(event.kind) else {
            return warn!(kind = event.kind, "unknown event from the XDP program");
        };
        *self.knock_outcomes.entry(kind.name()).or_default() += 1;
        if kind.is_refusal() && !self.refusals.admit(Instant::now()) {
            return;
        }
        let source = event.source.ip().map_or_else(|| "?".to_owned(), |ip| ip.to_string());
        let client =
            if event.client == 0 { "-".to_owned() } else { self.client_name(event.client) };
        let step = event.step;
        let slot =
            if event.slot == STATIC_SLOT { "static".to_owned() } else { event.slot.to_string() };
        self.audit(kind, &event, &source);
        match kind {
            EventKind::Opened => {
                let window = format_duration(self.options.open_window);
                info!(%client, %source, %slot, %window, "door opened")
            }
            EventKind::Replay => {
                warn!(%client, %source, %slot, "replayed sequence refused (already used)")
            }
            EventKind::Reset => info!(%client, %source, step, "knock reset by a wrong packet"),
            EventKind::Timeout => info!(%client, %source, step, "knock timed out"),
            EventKind::Stale => {
                info!(%source, step, "sequence completed outside its slot's window")
            }
            EventKind::AllowFull => {
                warn!(%client, %source, "sequence completed but the allow map is full")
            }
            EventKind::SpaOpened => {
                let window = format_duration(self.options.open_window);
                info!(%client, %source, %window, "door opened by a single-packet authorization")
            }
            EventKind::SpaReplay => {
                warn!(%client, %source, "replayed single-packet authorization refused")
            }
            EventKind::Limited => warn!(%source,
                "failed knocks over the limit: knocks from this address (or /64) are ignored for a while"),
        }
    }

    /// Logs and audits how many refusals went unrecorded, once their second is over.
    pub(super) fn report_unlogged_refusals(&mut self) {
        let Some(count) = self.refusals.take_unlogged(Instant::now()) else {
            return;
        };
        warn!(count, per_second = REFUSALS_PER_SECOND, "more knock refusals than logged");
        let mut record = audit::Record::now("unlogged", "-".to_owned());
        record.count = Some(count);
        if let Err(err) = audit::append(&self.state_dir, &record) {
            warn!("audit log: {err:#}");
        }
    }

    /// Records openings and refusals in the audit trail.
    fn audit(&mut self, kind: EventKind, event: &Event, source: &str) {
        let mut record = audit::Record::now(kind.name(), source.to_owned());
        record.client = (event.client != 0).then(|| self.client_name(event.client));
        record.slot = (event.client != 0 && event.slot != STATIC_SLOT).then_some(event.slot);
        record.step = event.step;
        if kind.is_opening() {
            record.open_secs = Some(self.options.open_window.as_secs());
        }
        if let Err(err) = audit::append(&self.state_dir, &record) {
            warn!("audit log: {err:#}");
        }
    }
}

/// Refusals logged and audited per second at most.
pub(super) const REFUSALS_PER_SECOND: u32 = 20;

/// Counts refusals in one-second windows: the first [`REFUSALS_PER_SECOND`]
/// of a window are logged, the rest only counted.
#[derive(Debug, Default)]
pub(super) struct RefusalBudget {
    window: Option<Instant>,
    logged: u32,
    unlogged: u64,
}

impl RefusalBudget {
    /// Whether a refusal seen at `now` may be logged.
    pub(super) fn admit(&mut self, now: Instant) -> bool {
        let window = *self.window.get_or_insert(now);
        if now.duration_since(window) >= Duration::from_secs(1) && self.unlogged == 0 {
            self.window = Some(now);
            self.logged = 0;
        }
        if self.logged < REFUSALS_PER_SECOND {
            self.logged += 1;
            true
        } else {
            self.unlogged += 1;
            false
        }
    }

    /// Once the window is over: how many refusals went unlogged in it, if
    /// any. A new window starts.
    pub(super) fn take_unlogged(&mut self, now: Instant) -> Option<u64> {
        let window = self.window?;
        if self.unlogged == 0 || now.duration_since(window) < Duration::from_secs(1) {
            return None;
        }
        let count = self.unlogged;
        *self = Self { window: Some(now), logged: 0, unlogged: 0 };
        Some(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_beyond_the_budget_are_counted_and_reported_once() {
        let start = Instant::now();
        let mut budget = RefusalBudget::default();
        let logged = (0..100).filter(|_| budget.admit(start)).count();
        assert_eq!(logged, REFUSALS_PER_SECOND as usize);
        assert_eq!(budget.take_unlogged(start + Duration::from_millis(500)), None);
        let later = start + Duration::from_secs(1);
        assert_eq!(budget.take_unlogged(later), Some(100 - u64::from(REFUSALS_PER_SECOND)));
        assert_eq!(budget.take_unlogged(later + Duration::from_secs(5)), None);
        // The next window has a fresh budget.
        assert!(budget.admit(later));
    }

    #[test]
    fn a_quiet_window_starts_afresh_without_a_report() {
        let start = Instant::now();
        let mut budget = RefusalBudget::default();
        assert!((0..REFUSALS_PER_SECOND).all(|_| budget.admit(start)));
        let later = start + Duration::from_secs(2);
        assert!(budget.admit(later));
        assert_eq!(budget.take_unlogged(later + Duration::from_secs(2)), None);
    }
}
