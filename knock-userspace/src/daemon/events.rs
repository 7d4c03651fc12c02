//! Logging what the XDP program reports through its ring buffer: one line
//! per opening, refusal, reset or timeout; step-by-step progress at debug.

use knock_common::maps::{Event, STATIC_SLOT, event_kind};
use tracing::{debug, info, warn};

use super::Daemon;
use crate::audit;
use crate::units::format_duration;

impl Daemon {
    pub(super) fn log_event(&mut self, bytes: &[u8]) {
        let Ok(event) = bytemuck::try_pod_read_unaligned::<Event>(bytes) else {
            return warn!(len = bytes.len(), "malformed event from the XDP program");
        };
        let source = event.source.ip().map_or_else(|| "?".to_owned(), |ip| ip.to_string());
        let client =
            if event.client == 0 { "-".to_owned() } else { self.client_name(event.client) };
        let step = event.step;
        let slot =
            if event.slot == STATIC_SLOT { "static".to_owned() } else { event.slot.to_string() };
        self.audit(&event, &source);
        match event.kind {
            event_kind::PROGRESS => debug!(%client, %source, step, "knock"),
            event_kind::OPENED => {
                let window = format_duration(self.options.open_window);
                info!(%client, %source, %slot, %window, "door opened")
            }
            event_kind::REPLAY => {
                warn!(%client, %source, %slot, "replayed sequence refused (already used)")
            }
            event_kind::RESET => info!(%client, %source, step, "knock reset by a wrong packet"),
            event_kind::TIMEOUT => info!(%client, %source, step, "knock timed out"),
            event_kind::STALE => {
                info!(%source, step, "sequence completed outside its slot's window")
            }
            event_kind::ALLOW_FULL => {
                warn!(%client, %source, "sequence completed but the allow map is full")
            }
            other => warn!(kind = other, "unknown event from the XDP program"),
        }
    }

    /// Records openings and refusals in the audit trail (not progress).
    fn audit(&mut self, event: &Event, source: &str) {
        let name = match event.kind {
            event_kind::OPENED => "opened",
            event_kind::REPLAY => "replay",
            event_kind::RESET => "reset",
            event_kind::TIMEOUT => "timeout",
            event_kind::STALE => "stale",
            event_kind::ALLOW_FULL => "allow_full",
            _ => return,
        };
        *self.knock_outcomes.entry(name).or_default() += 1;
        let mut record = audit::Record::now(name, source.to_owned());
        record.client = (event.client != 0).then(|| self.client_name(event.client));
        record.slot = (event.client != 0 && event.slot != STATIC_SLOT).then_some(event.slot);
        record.step = event.step;
        if event.kind == event_kind::OPENED {
            record.open_secs = Some(self.options.open_window.as_secs());
        }
        if let Err(err) = audit::append(&self.state_dir, &record) {
            warn!("audit log: {err:#}");
        }
    }
}
