//! Installing the clients' sequences in the kernel, ahead of time.
//!
//! For a rotating client, the sequences of slots s-1, s, s+1 (accepted now)
//! and s+2 (accepted from the next slot on) are installed, each with the
//! boot-clock window in which it is valid. The kernel checks that window
//! itself, so it never depends on this task waking up at a slot boundary:
//! there is a whole slot to install the next one.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Result;
use knock_common::{
    knock::set_bit,
    maps::{SLOTS_PER_CLIENT, STATIC_SLOT, SequenceInfo, StepEntry, StepKey},
    verdict::Transport,
};
use tracing::{debug, warn};

use super::Daemon;
use crate::{clients::Client, clock, ports::ProtoPort, procnet, profile::Knock, tables::Tables};

/// What is installed, so each pass writes only what changed.
#[derive(Default)]
pub(crate) struct Installed {
    sequences: BTreeMap<u32, Installation>,
    steps: BTreeMap<StepKey, StepEntry>,
    knock_ports: BTreeSet<ProtoPort>,
    /// The steps and knock-port flags in the kernel are known to be exactly
    /// those of `sequences`. Not so in maps taken over from a daemon that
    /// may have been killed between its writes, until a first full pass.
    consistent: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Installation {
    client: u32,
    slot: u64,
    ports: Vec<ProtoPort>,
    info: SequenceInfo,
}

impl Installed {
    /// What an earlier run left installed in adopted maps, so the first
    /// rotation replaces exactly what changed (and retires what is gone).
    pub(crate) fn from_kernel(tables: &Tables, clients: &[Client]) -> Result<Self> {
        let steps = tables.steps()?;
        // The flags as the kernel has them, not as the steps imply: a daemon
        // killed after writing steps but before flagging their ports (or
        // unflagging removed ones) left the two apart.
        let knock_ports = tables.knock_ports()?;
        let mut sequences = BTreeMap::new();
        for (index, info) in tables.sequences()? {
            if info.valid_until_ns == 0 {
                continue;
            }
            // The ports of a client that still exists derive again; one that
            // is gone keeps none, so the first rotation retires it.
            let ports = clients
                .iter()
                .find(|c| c.id == info.client)
                .and_then(|c| {
                    c.profile
                        .sequence_for_slot(if info.slot == STATIC_SLOT { 0 } else { info.slot })
                        .ok()
                })
                .unwrap_or_default();
            sequences
                .insert(index, Installation { client: info.client, slot: info.slot, ports, info });
        }
        Ok(Self { sequences, steps, knock_ports, consistent: false })
    }

    pub(crate) fn count(&self) -> usize {
        self.sequences.len()
    }
}

/// Real time now, in nanoseconds since the epoch.
fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

impl Daemon {
    /// Brings the kernel's sequences up to date with the clients and the clock.
    /// Cheap when nothing changed: only new (client, slot) pairs are derived.
    pub(super) fn rotate(&mut self) -> Result<()> {
        let unix_now = unix_ns();
        let boot_now = clock::boot_ns();
        // Converts a UNIX time (seconds) to the boot clock the kernel reads.
        let to_boot = |unix_secs: u64| {
            let delta = i128::from(unix_secs) * 1_000_000_000 - i128::from(unix_now);
            (i128::from(boot_now) + delta).clamp(0, i128::from(u64::MAX)) as u64
        };

        let mut wanted: BTreeMap<u32, (u32, u64)> = BTreeMap::new(); // index → (client, slot)
        for client in &self.clients {
            // Each client's slots sit at its stable index.
            let base = client.index * SLOTS_PER_CLIENT;
            match &client.profile.knock {
                Knock::Static { .. } => {
                    wanted.insert(base, (client.id, STATIC_SLOT));
                }
                Knock::Rotating { slot_secs, .. } => {
                    let now_slot = unix_now / 1_000_000_000 / u64::from(*slot_secs);
                    for slot in now_slot.saturating_sub(1)..=now_slot + 2 {
                        wanted.insert(
                            base + (slot % u64::from(SLOTS_PER_CLIENT)) as u32,
                            (client.id, slot),
                        );
                    }
                }
            }
        }
        let unchanged = wanted.len() == self.installed.sequences.len()
            && wanted.iter().all(|(index, (client, slot))| {
                self.installed
                    .sequences
                    .get(index)
                    .is_some_and(|i| i.client == *client && i.slot == *slot)
            });
        if unchanged && self.installed.consistent {
            return Ok(());
        }

        // The new set: keep what is installed, derive only what is new.
        let mut next: BTreeMap<u32, Installation> = BTreeMap::new();
        for (&index, &(client_id, slot)) in &wanted {
            if let Some(old) = self
                .installed
                .sequences
                .get(&index)
                .filter(|i| i.client == client_id && i.slot == slot)
            {
                next.insert(index, old.clone());
                continue;
            }
            let client =
                self.clients.iter().find(|c| c.id == client_id).expect("wanted from clients");
            let ports =
                client.profile.sequence_for_slot(if slot == STATIC_SLOT { 0 } else { slot })?;
            let (valid_from_ns, valid_until_ns) = match &client.profile.knock {
                Knock::Static { .. } => (0, u64::MAX),
                // Slot x is accepted during slots x-1, x and x+1.
                Knock::Rotating { slot_secs, .. } => {
                    let len = u64::from(*slot_secs);
                    (to_boot(slot.saturating_sub(1) * len), to_boot((slot + 2) * len))
                }
            };
            let info = SequenceInfo {
                valid_from_ns,
                valid_until_ns,
                slot,
                client: client_id,
                length: ports.len() as u32,
            };
            next.insert(index, Installation { client: client_id, slot, ports, info });
        }

        let steps = steps_of(&next);
        let knock_ports: BTreeSet<ProtoPort> =
            next.values().flat_map(|i| i.ports.iter().copied()).collect();

        // Order matters for knocks in flight: retire changed indexes first,
        // then rewrite the steps, then publish the new sequences.
        let changed: Vec<u32> = self
            .installed
            .sequences
            .iter()
            .filter(|(index, old)| next.get(index) != Some(old))
            .map(|(index, _)| *index)
            .collect();
        for &index in &changed {
            self.tables.set_sequence(index, SequenceInfo::default())?;
        }
        for (key, entry) in &steps {
            if self.installed.steps.get(key) != Some(entry) {
                self.tables.set_step(*key, *entry)?;
            }
        }
        for key in self.installed.steps.keys().filter(|k| !steps.contains_key(k)) {
            self.tables.remove_step(key)?;
        }
        for (index, installation) in &next {
            if self.installed.sequences.get(index) != Some(installation) {
                self.tables.set_sequence(*index, installation.info)?;
                let name = self.client_name(installation.client);
                debug!(client = %name, slot = installation.slot, index, "sequence installed");
                self.warn_collisions(&name, installation);
            }
        }
        self.tables.set_knock_ports(&self.installed.knock_ports, &knock_ports)?;

        // Single-use records matter only while their slot is accepted.
        let live: BTreeSet<(u32, u64)> = next.values().map(|i| (i.client, i.slot)).collect();
        self.tables.prune_used(|k| live.contains(&(k.client, k.slot)))?;

        self.installed.sequences = next;
        self.installed.steps = steps;
        self.installed.knock_ports = knock_ports;
        self.installed.consistent = true;
        Ok(())
    }

    /// Warns when a knock port would hide a service for as long as the
    /// sequence is installed: knocks on it are dropped.
    fn warn_collisions(&self, name: &str, installation: &Installation) {
        let listening = procnet::listening_ports();
        let slot = match installation.slot {
            STATIC_SLOT => "static".to_owned(),
            slot => slot.to_string(),
        };
        for port in &installation.ports {
            if self.protected().contains(port) {
                warn!(client = %name, port = %port, %slot,
                    "knock port is also a protected port: new connections to it are dropped while this sequence is installed");
            } else if listening.contains(port) {
                warn!(client = %name, port = %port, %slot,
                    "knock port has a listening socket on this host: that service is unreachable while this sequence is installed");
            }
        }
    }

    pub(super) fn client_name(&self, id: u32) -> String {
        self.clients
            .iter()
            .find(|c| c.id == id)
            .map_or_else(|| format!("#{id}"), |c| c.profile.name.clone())
    }
}

/// The step bitmaps of a set of sequences.
fn steps_of(sequences: &BTreeMap<u32, Installation>) -> BTreeMap<StepKey, StepEntry> {
    let mut steps: BTreeMap<StepKey, StepEntry> = BTreeMap::new();
    for (&index, installation) in sequences {
        let last = installation.ports.len() - 1;
        for (step, port) in installation.ports.iter().enumerate() {
            let key = StepKey {
                port: port.port,
                proto: Transport::from(port.proto).number(),
                step: step as u8,
            };
            let entry = steps.entry(key).or_default();
            set_bit(&mut entry.continues, index);
            if step == last {
                set_bit(&mut entry.finishes, index);
            }
        }
    }
    steps
}
