//! Removing allow entries whose deadline has passed, dead flows and the
//! admission filter's stale slots.

use knock_common::filter::SLOTS;
use tracing::{debug, info, warn};

use super::Daemon;
use crate::{clock, loader};

impl Daemon {
    pub(super) fn sweep(&mut self) {
        let now = clock::boot_ns();
        // The kernel already ignores them; this only frees the slots.
        match self.maps.remove_allowed(|_, entry| !entry.admits(now)) {
            Ok(expired) => {
                for key in expired {
                    if let Some(addr) = key.ip() {
                        info!(source = %addr, "allow window ended");
                    }
                }
            }
            Err(err) => warn!("sweep: {err:#}"),
        }
    }

    /// Removes flows the kernel no longer admits, to free their slots.
    pub(super) fn sweep_flows(&mut self) {
        let now = clock::flow_ns();
        let settings = super::settings(&self.options);
        if let Err(err) = self.maps.end_flows(|_, entry| entry.is_dead(now, &settings)) {
            warn!("flow sweep: {err:#}");
        }
    }

    /// Rebuilds the admission filter once its set slots outnumber twice the
    /// live ones at the last rebuild, plus some slack: a stale slot only
    /// costs a stranger's packet the lookups, so this runs rarely.
    pub(super) fn tidy_filter(&mut self) {
        const SLACK: usize = SLOTS as usize / 64;
        match self.maps.filter_load() {
            Ok(load) if load <= 2 * self.filter_live + SLACK => {}
            Ok(load) => match self.maps.rebuild_filter() {
                Ok(live) => {
                    debug!(before = load, after = live, "admission filter rebuilt");
                    self.filter_live = live;
                }
                Err(err) => warn!("admission filter: {err:#}"),
            },
            Err(err) => warn!("admission filter: {err:#}"),
        }
    }

    /// Follows interfaces coming and going: one that disappeared is logged and
    /// forgotten (the others keep working); one asked for at `attach` that
    /// (re)appears is attached.
    pub(super) fn watch_interfaces(&mut self) {
        let gone: Vec<String> = self
            .program
            .attachments
            .iter()
            .filter(|a| loader::if_index(&a.iface).ok() != Some(a.ifindex))
            .map(|a| a.iface.clone())
            .collect();
        for iface in gone {
            warn!(interface = %iface, "interface disappeared; the other interfaces stay protected");
            self.program.forget(&iface);
        }
        for iface in self.options.ifaces.clone() {
            let attached = self.program.attachments.iter().any(|a| a.iface == iface);
            if !attached && loader::if_index(&iface).is_ok() {
                match self.program.attach(&iface, self.options.mode) {
                    Ok(()) => warn!(interface = %iface, "interface is back; attached again"),
                    Err(err) => warn!(interface = %iface, "cannot attach again: {err:#}"),
                }
            }
        }
    }
}
