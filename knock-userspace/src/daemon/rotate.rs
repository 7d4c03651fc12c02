//! Installing the clients' sequences in the kernel, ahead of time.
//!
//! For a rotating client, the sequences of slots s-1, s, s+1 (accepted now)
//! and s+2 (accepted from the next slot on) are installed, each with the
//! boot-clock window in which it is valid. The kernel checks that window
//! itself, so it never depends on this task waking up at a slot boundary:
//! there is a whole slot to install the next one.
//!
//! Everything goes through knock-common's [`KnockTable`], which writes only
//! what changed; a client whose sequences cannot be derived is logged once
//! per slot and skipped, and every other client keeps working.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Result, bail};
use knock_common::{
    ProtoPort,
    maps::{Runtime, SLOTS_PER_CLIENT},
    spa::{SpaKey, policy, spa_key},
    trie::{KnockTable, STATIC_SLOT, SequenceInfo},
};
use tracing::{debug, info, warn};

use super::Daemon;
use crate::{
    clients::Client,
    clock,
    footguns::KnockSpace,
    maps::KernelMaps,
    procnet,
    profile::{Knock, Profile},
};

/// What is installed, so each pass writes only what changed.
pub(crate) struct Installed {
    table: KnockTable,
    knock_space: BTreeSet<ProtoPort>,
    spa_ports: BTreeSet<ProtoPort>,
    spa_keys: BTreeMap<u32, SpaKey>,
    /// Clients that could not be derived, with the slot last reported, so
    /// each is logged once per slot rather than every pass.
    broken: BTreeMap<u32, u64>,
}

impl Installed {
    /// What an earlier run left installed in adopted maps, so the first
    /// rotation replaces exactly what changed, repairs what a killed daemon
    /// left half written, and keeps the node ids of knocks in progress.
    pub(crate) fn from_kernel(maps: &KernelMaps) -> Result<Self> {
        Ok(Self {
            table: KnockTable::adopt(maps.edges()?, maps.sequences()?),
            knock_space: maps.knock_space()?,
            spa_ports: maps.spa_ports()?,
            spa_keys: maps.spa_keys()?,
            broken: BTreeMap::new(),
        })
    }

    pub(crate) fn count(&self) -> usize {
        self.table.sequences().count()
    }

    /// Ids of the clients whose sequences cannot be derived.
    pub(crate) fn broken(&self) -> impl Iterator<Item = u32> + '_ {
        self.broken.keys().copied()
    }

    /// The (client, slot) of every installed sequence.
    fn live_slots(&self) -> BTreeSet<(u32, u64)> {
        self.table.sequences().map(|(_, info, _)| (info.client, info.slot)).collect()
    }
}

/// The ports where an attempt may be a knock, per protocol: the range of
/// every rotating client (less its exclusions), and the span from the
/// lowest to the highest port of every static sequence. Attempts anywhere
/// else never touch knock state, so the web server on the same host spoils
/// nobody's knock.
pub(crate) fn knock_space(clients: &[Client]) -> BTreeSet<ProtoPort> {
    spaces(clients, |c| !matches!(c.profile.knock, Knock::Spa { .. }))
}

/// The UDP ports where a datagram may be a single-packet authorization.
pub(crate) fn spa_ports(clients: &[Client]) -> BTreeSet<ProtoPort> {
    spaces(clients, |c| matches!(c.profile.knock, Knock::Spa { .. }))
}

/// The ports of the spaces of the clients `which` picks. Many clients
/// share one range: each distinct one is expanded once.
fn spaces(clients: &[Client], which: impl Fn(&Client) -> bool) -> BTreeSet<ProtoPort> {
    let distinct: BTreeSet<KnockSpace> =
        clients.iter().filter(|c| which(c)).flat_map(|c| KnockSpace::of(&c.profile)).collect();
    distinct.iter().flat_map(KnockSpace::ports).collect()
}

/// Real time now, in nanoseconds since the epoch.
pub(super) fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

impl Daemon {
    /// Brings the kernel's sequences up to date with the clients and the clock.
    /// Cheap when nothing changed: only new (client, slot) pairs are derived.
    pub(super) fn rotate(&mut self) -> Result<()> {
        self.maps.rotation_begins();
        let unix_now = unix_ns();
        let boot_now = clock::boot_ns();
        // Converts a UNIX time (seconds) to the boot clock the kernel reads.
        let to_boot = |unix_secs: u64| {
            let delta = i128::from(unix_secs) * 1_000_000_000 - i128::from(unix_now);
            (i128::from(boot_now) + delta).clamp(0, i128::from(u64::MAX)) as u64
        };

        // The program checks SPA datagrams' clocks against this.
        self.maps.set_runtime(Runtime::UnixOffset, unix_now.wrapping_sub(boot_now))?;

        let mut wanted = BTreeSet::new();
        let mut wanted_keys = BTreeMap::new();
        let protected = self.protected();
        let mut listening = None;
        let capacity = self.maps.client_capacity();
        for client in &self.clients {
            if client.index >= capacity {
                if self.installed.broken.insert(client.id, u64::MAX).is_none() {
                    warn!(client = %client.profile.name, index = client.index, capacity,
                        "client skipped: the kernel's maps hold fewer clients (raise [limits] \
                         clients, then detach and attach)");
                }
                continue;
            }
            if let Knock::Spa { may_name_address, .. } = &client.profile.knock {
                match client.profile.spa_key() {
                    Ok(key) => {
                        let bits = if *may_name_address { policy::MAY_ADMIT_OTHER } else { 0 };
                        wanted_keys.insert(client.index, spa_key(&key, client.id, bits));
                        self.installed.broken.remove(&client.id);
                    }
                    Err(err) => {
                        if self.installed.broken.insert(client.id, 0).is_none() {
                            warn!(client = %client.profile.name, "client skipped, its key cannot be derived: {err:#}");
                        }
                    }
                }
                continue;
            }
            let slots = wanted_slots(&client.profile, unix_now / 1_000_000_000);
            let derived: Result<Vec<(u32, SequenceInfo, Vec<ProtoPort>)>> = slots
                .into_iter()
                .map(|slot| {
                    let index = client.index * SLOTS_PER_CLIENT
                        + if slot == STATIC_SLOT { 0 } else { (slot % 4) as u32 };
                    let (valid_from_ns, valid_until_ns) = match &client.profile.knock {
                        Knock::Static { .. } | Knock::Spa { .. } => (0, u64::MAX),
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
                        client: client.id,
                        length: 0,
                    };
                    if let Some((old, steps)) = self.installed.table.sequence(index)
                        && old.client == client.id
                        && old.slot == slot
                    {
                        // Derived before: keep it (its window too). A fleet
                        // client's too: the server name never changes
                        // while the daemon runs.
                        return Ok((index, *old, steps.to_vec()));
                    }
                    // A fleet client's sequences are this server's own.
                    let server = match &self.options.server_name {
                        Ok(name) => Some(name),
                        Err(why) if client.profile.is_fleet() => bail!("{why}"),
                        Err(_) => None,
                    };
                    let steps = client.profile.sequence_for_slot(slot_or_zero(slot), server)?;
                    Ok((index, SequenceInfo { length: steps.len() as u32, ..info }, steps))
                })
                .collect();
            let derived = match derived {
                Ok(derived) => {
                    self.installed.broken.remove(&client.id);
                    derived
                }
                Err(err) => {
                    let slot = client.profile.slot_at(unix_now / 1_000_000_000).unwrap_or(0);
                    if self.installed.broken.insert(client.id, slot) != Some(slot) {
                        warn!(client = %client.profile.name,
                            "client skipped, its sequences cannot be derived: {err:#}");
                    }
                    continue;
                }
            };
            for (index, info, steps) in derived {
                let new = self.installed.table.sequence(index).is_none_or(|(old, _)| *old != info);
                match self.installed.table.install(index, info, &steps) {
                    Ok(()) => {
                        wanted.insert(index);
                        if new {
                            debug!(client = %client.profile.name, slot = info.slot, index,
                                "sequence installed");
                            let listening = listening.get_or_insert_with(procnet::listening_ports);
                            warn_collisions(&protected, listening, &client.profile.name, &steps);
                        }
                    }
                    Err(err) => warn!(client = %client.profile.name, slot = info.slot,
                        "sequence not installed: {err}"),
                }
            }
        }
        let gone: Vec<u32> = self
            .installed
            .table
            .sequences()
            .map(|(index, _, _)| index)
            .filter(|index| !wanted.contains(index))
            .collect();
        for index in gone {
            self.installed.table.retire(index);
        }
        self.installed.table.sync(&mut self.maps)?;

        if self.installed.knock_space != self.knock_space {
            self.maps.set_knock_space(&self.installed.knock_space, &self.knock_space)?;
            self.installed.knock_space = self.knock_space.clone();
        }
        self.install_spa(wanted_keys)?;

        // Single-use records matter only while their slot is accepted.
        let live = self.installed.live_slots();
        self.maps.prune_used(|k| live.contains(&(k.client, k.slot)))?;
        Ok(())
    }

    /// Marks used what the last stop recorded, for the slots now installed.
    pub(super) fn restore_used(&mut self) {
        let live = self.installed.live_slots();
        match crate::used::restore(&self.state_dir, &mut self.maps, &live) {
            Ok(0) => {}
            Ok(records) => info!(records, "sequences used before the last stop stay used"),
            Err(err) => warn!(
                "sequences used before the last stop are not known; a knock recorded \
                 then may open the door again until its slot passes: {err:#}"
            ),
        }
    }

    /// Writes the SPA keys and ports that changed. A removed client's key
    /// is zeroed, so its datagrams stop verifying at once.
    fn install_spa(&mut self, wanted: BTreeMap<u32, SpaKey>) -> Result<()> {
        for index in self.installed.spa_keys.keys().copied().collect::<Vec<_>>() {
            if !wanted.contains_key(&index) {
                self.maps.set_spa_key(index, &SpaKey::default())?;
                self.installed.spa_keys.remove(&index);
            }
        }
        for (index, key) in wanted {
            if self.installed.spa_keys.get(&index) != Some(&key) {
                self.maps.set_spa_key(index, &key)?;
                self.installed.spa_keys.insert(index, key);
            }
        }
        let ports = spa_ports(&self.clients);
        if self.installed.spa_ports != ports {
            self.maps.set_spa_ports(&self.installed.spa_ports, &ports)?;
            self.installed.spa_ports = ports;
        }
        Ok(())
    }

    pub(super) fn client_name(&self, id: u32) -> String {
        self.clients
            .iter()
            .find(|c| c.id == id)
            .map_or_else(|| format!("#{id}"), |c| c.profile.name.clone())
    }
}

/// Warns when a knock port is a protected port or has a listening socket:
/// the knock then goes to that service (or is dropped by protection).
fn warn_collisions(
    protected: &BTreeSet<ProtoPort>,
    listening: &BTreeSet<ProtoPort>,
    name: &str,
    steps: &[ProtoPort],
) {
    for port in steps {
        if protected.contains(port) {
            warn!(client = %name, port = %port,
                "knock port is also a protected port: knocks on it are dropped unless allowed");
        } else if listening.contains(port) {
            warn!(client = %name, port = %port,
                "knock port has a listening socket on this host: the knock reaches that service");
        }
    }
}

/// The slots a client has installed at UNIX second `now`: s-1..=s+2, or the
/// one static sequence.
fn wanted_slots(profile: &Profile, now: u64) -> Vec<u64> {
    match profile.slot_at(now) {
        None => vec![STATIC_SLOT],
        Some(slot) => (slot.saturating_sub(1)..=slot + 2).collect(),
    }
}

fn slot_or_zero(slot: u64) -> u64 {
    if slot == STATIC_SLOT { 0 } else { slot }
}

#[cfg(test)]
mod tests {
    use knock_common::Proto;

    use super::*;
    use crate::profile::{Key, Profile};

    fn client(index: u32, knock: Knock) -> Client {
        Client { id: index + 1, index, profile: Profile { name: format!("c{index}"), knock } }
    }

    #[test]
    fn the_knock_space_is_each_range_less_exclusions_and_each_static_span() {
        let rotating = Knock::Rotating {
            key: Key::Random([1; 32]),
            proto: Proto::Udp,
            length: 2,
            slot_secs: 30,
            ports: (100, 110),
            exclude: vec![105],
            fleet: false,
        };
        let statik = Knock::Static {
            steps: vec![
                ProtoPort::new(Proto::Tcp, 7000),
                ProtoPort::new(Proto::Udp, 8000),
                ProtoPort::new(Proto::Tcp, 7005),
            ],
        };
        let space =
            knock_space(&[client(0, rotating.clone()), client(1, rotating), client(2, statik)]);
        let udp: Vec<u16> =
            space.iter().filter(|p| p.proto == Proto::Udp).map(|p| p.port).collect();
        let tcp: Vec<u16> =
            space.iter().filter(|p| p.proto == Proto::Tcp).map(|p| p.port).collect();
        assert_eq!(udp, [100, 101, 102, 103, 104, 106, 107, 108, 109, 110, 8000]);
        assert_eq!(tcp, (7000..=7005).collect::<Vec<_>>());
    }
}
