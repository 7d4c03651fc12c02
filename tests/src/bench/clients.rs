//! Thousands of clients: the daemon's write path (sequences derived, put
//! through `KnockTable::sync` into real maps sized for them), a rotation of
//! every client at once, the cost of a knock step with one client installed
//! and with all of them, and the locked map memory at both sizes.

use std::time::Instant;

use anyhow::{Result, anyhow, bail, ensure};
use knock_common::{
    Proto, ProtoPort,
    decide::XDP_PASS,
    maps::{Limits, SLOTS_PER_CLIENT},
    proto::tcp_flags::SYN,
    sequence::{self, Params},
    trie::{Edge, EdgeKey, KnockSink, SequenceInfo},
};
use knock_userspace::{clock, maps::KernelMaps};
use serde_json::{Value, json};

use super::{
    Settings,
    harness::{
        HOUR_NS, Knock, PathRow, SEQ_INDEX, families, load_noop, noop_baseline, noop_prog, tcp,
        test_run,
    },
    per_packet::fresh_rows,
    scale::{map_memlock, memlock_json, memlock_line, memlock_total_mib},
};

/// The default range and length of a rotating client (`client add`).
const PORTS: (u16, u16) = (61_000, 65_535);
const LENGTH: u8 = 4;
const SLOT_SECS: u64 = 30;

#[derive(Clone, Debug, Default)]
pub struct Clients {
    pub clients: u32,
    pub default_memlock: Vec<(String, u32, u64)>,
    pub sized_memlock: Vec<(String, u32, u64)>,
    /// Installing every client's 4 slots: deriving, then `install` and `sync`.
    pub install_derive_ms: f64,
    pub install_sync_ms: f64,
    pub install_writes: usize,
    /// One slot further for every client at once.
    pub rotate_derive_ms: f64,
    pub rotate_sync_ms: f64,
    pub rotate_writes: usize,
    /// Why the rotation failed in maps sized for exactly `clients`, if it
    /// did (the maps refused a write).
    pub failure: Option<String>,
    /// The `[limits] clients` of the maps the rotation was timed in.
    pub rotated_with_limit: u32,
    pub edges: usize,
    pub sequences: usize,
    /// Knock steps with 1 client installed, then with all of them.
    pub rows: Vec<PathRow>,
}

impl Clients {
    pub fn table(&self, s: &mut String) {
        s.push_str(&format!("\nclients. {} clients with {SLOTS_PER_CLIENT} live slots each (rotating, {LENGTH} knocks in {}-{})\n", self.clients, PORTS.0, PORTS.1));
        s.push_str(&format!(
            "map memory (memlock), default limits: {}\nmap memory (memlock), clients = {}: {}\n",
            memlock_line(&self.default_memlock),
            self.clients,
            memlock_line(&self.sized_memlock)
        ));
        s.push_str(&format!(
            "install all: derive {:.1} ms, KnockTable install + sync {:.1} ms ({} map writes); {} edges, {} sequences in the maps\n",
            self.install_derive_ms, self.install_sync_ms, self.install_writes, self.edges, self.sequences
        ));
        if let Some(why) = &self.failure {
            s.push_str(&format!(
                "rotation of every client in maps sized for clients = {}: FAILED: {why}\n",
                self.clients
            ));
        }
        s.push_str(&format!(
            "rotation of every client by one slot (maps sized for clients = {}): derive {:.1} ms, \
             KnockTable install + sync {:.1} ms ({} map writes)\n",
            self.rotated_with_limit, self.rotate_derive_ms, self.rotate_sync_ms, self.rotate_writes
        ));
        s.push_str(&PathRow::header());
        s.push('\n');
        for r in &self.rows {
            s.push_str(&r.line());
            s.push('\n');
        }
        for (step, growth) in self.growth() {
            s.push_str(&format!("{step}: {} clients / 1 client = {growth:.2}x\n", self.clients));
        }
    }

    /// Per knock step, its cost with every client over its cost with one.
    pub fn growth(&self) -> Vec<(String, f64)> {
        let one: Vec<&PathRow> =
            self.rows.iter().filter(|r| r.name.ends_with(", 1 client")).collect();
        one.iter()
            .filter_map(|r| {
                let step = r.name.trim_end_matches(", 1 client");
                let all = self
                    .rows
                    .iter()
                    .find(|a| a.name == format!("{step}, {} clients", self.clients))?;
                Some((step.to_owned(), all.ns / r.ns))
            })
            .collect()
    }

    pub fn json(&self) -> Value {
        json!({
            "clients": self.clients,
            "map_memlock_bytes_default": memlock_json(&self.default_memlock),
            "map_memlock_bytes_sized": memlock_json(&self.sized_memlock),
            "memlock_total_mib_default": memlock_total_mib(&self.default_memlock),
            "memlock_total_mib_sized": memlock_total_mib(&self.sized_memlock),
            "install_derive_ms": self.install_derive_ms,
            "install_sync_ms": self.install_sync_ms,
            "install_writes": self.install_writes,
            "rotate_derive_ms": self.rotate_derive_ms,
            "rotate_sync_ms": self.rotate_sync_ms,
            "rotate_writes": self.rotate_writes,
            "rotation_failure": self.failure,
            "rotated_with_clients_limit": self.rotated_with_limit,
            "edges": self.edges,
            "sequences": self.sequences,
            "rows": self.rows.iter().map(PathRow::json).collect::<Vec<_>>(),
            "step_growth": self.growth().into_iter().map(|(s, g)| json!({"step": s, "ratio": g})).collect::<Vec<_>>(),
        })
    }

    pub fn notes(&self, notes: &mut Vec<String>) {
        if let Some(why) = &self.failure {
            notes.push(format!(
                "a rotation of {0} clients fails in maps sized for [limits] clients = {0}: {why}. \
                 KnockTable::sync writes the new edges before it removes the old ones, so a \
                 rotation needs room for both, and KNOCK_EDGES (clients x 16 entries) has none left \
                 once every client is installed",
                self.clients
            ));
        }
        for (step, growth) in self.growth() {
            if growth > 1.25 {
                notes.push(format!(
                    "{step} costs {growth:.2}x more with {} clients than with one",
                    self.clients
                ));
            }
        }
    }
}

/// [`KernelMaps`] as the sink of a sync, counting its writes.
struct Counting<'a> {
    maps: &'a mut KernelMaps,
    writes: usize,
}

impl Counting<'_> {
    fn maps_sync(&mut self, table: &mut knock_common::trie::KnockTable) -> Result<()> {
        table.sync(self)
    }
}

impl KnockSink for Counting<'_> {
    type Error = anyhow::Error;
    fn set_edge(&mut self, key: &EdgeKey, edge: &Edge) -> Result<()> {
        self.writes += 1;
        self.maps.set_edge(key, edge)
    }
    fn remove_edge(&mut self, key: &EdgeKey) -> Result<()> {
        self.writes += 1;
        self.maps.remove_edge(key)
    }
    fn set_sequence(&mut self, index: u32, info: &SequenceInfo) -> Result<()> {
        self.writes += 1;
        self.maps.set_sequence(index, info)
    }
}

/// Client `c`'s secret: distinct per client, and never the bench sequence's.
fn secret(c: u32) -> [u8; 32] {
    let mut s = [0x5c; 32];
    s[..4].copy_from_slice(&c.to_be_bytes());
    s
}

fn derive(c: u32, slot: u64) -> Result<Vec<ProtoPort>> {
    let params = Params { length: LENGTH, port_lo: PORTS.0, port_hi: PORTS.1, exclude: &[] };
    let seq = sequence::derive(&secret(c), slot, &params).map_err(|e| anyhow!("{e}"))?;
    Ok(seq.as_slice().iter().map(|&p| ProtoPort::new(Proto::Tcp, p)).collect())
}

/// Every client but the bench's (index 1: its sequence lives at index
/// [`SEQ_INDEX`]), each slot of `slots`: (sequence index, info, knocks).
fn derive_all(
    clients: u32,
    slots: std::ops::Range<u64>,
    valid: (u64, u64),
) -> Result<Vec<(u32, SequenceInfo, Vec<ProtoPort>)>> {
    let bench_client = SEQ_INDEX / SLOTS_PER_CLIENT;
    let mut out = Vec::new();
    for c in (0..clients).filter(|&c| c != bench_client) {
        for slot in slots.clone() {
            let steps = derive(c, slot)?;
            let info = SequenceInfo {
                valid_from_ns: valid.0,
                valid_until_ns: valid.1,
                slot,
                client: 1000 + c,
                length: steps.len() as u32,
            };
            out.push((
                c * SLOTS_PER_CLIENT + (slot % u64::from(SLOTS_PER_CLIENT)) as u32,
                info,
                steps,
            ));
        }
    }
    Ok(out)
}

/// Installs every client's four slots from `slot - 1` on, as a daemon
/// starting with that many clients does: (derive ms, install + sync ms, writes).
fn install_all(
    knock: &mut Knock,
    clients: u32,
    slot: u64,
    valid: (u64, u64),
) -> Result<(f64, f64, usize)> {
    let start = Instant::now();
    let wanted = derive_all(clients, slot - 1..slot + 3, valid)?;
    let derive_ms = start.elapsed().as_secs_f64() * 1e3;
    let start = Instant::now();
    for (index, info, steps) in &wanted {
        knock.table.install(*index, *info, steps).map_err(|e| anyhow!("{e}"))?;
    }
    let mut sink = Counting { maps: &mut knock.maps, writes: 0 };
    knock.table.sync(&mut sink)?;
    let writes = sink.writes;
    let sync_ms = start.elapsed().as_secs_f64() * 1e3;
    ensure!(knock.table.in_sync(), "the maps do not hold what was installed");
    let sequences = knock.maps.sequences()?.len();
    ensure!(
        sequences == wanted.len() + 1,
        "{sequences} sequences in the maps, {} installed",
        wanted.len() + 1
    );
    Ok((derive_ms, sync_ms, writes))
}

/// The rotation: slot + 3 replaces slot - 1 in every client's ring of four.
/// (derive ms, install + sync ms, writes, the sequences rotated in, or why
/// the maps refused a write).
struct Rotation {
    derive_ms: f64,
    sync_ms: f64,
    writes: usize,
    next: Vec<(u32, SequenceInfo, Vec<ProtoPort>)>,
    failure: Option<String>,
}

fn rotate(knock: &mut Knock, clients: u32, slot: u64, valid: (u64, u64)) -> Result<Rotation> {
    let start = Instant::now();
    let next = derive_all(clients, slot + 3..slot + 4, valid)?;
    let derive_ms = start.elapsed().as_secs_f64() * 1e3;
    let start = Instant::now();
    for (index, info, steps) in &next {
        knock.table.install(*index, *info, steps).map_err(|e| anyhow!("{e}"))?;
    }
    let mut sink = Counting { maps: &mut knock.maps, writes: 0 };
    let synced = sink.maps_sync(&mut knock.table);
    let writes = sink.writes;
    let sync_ms = start.elapsed().as_secs_f64() * 1e3;
    let failure = synced.err().map(|err| format!("{err:#} after {writes} writes"));
    if failure.is_none() {
        ensure!(knock.table.in_sync(), "the maps do not hold the rotated sequences");
    }
    Ok(Rotation { derive_ms, sync_ms, writes, next, failure })
}

/// Maps sized for `limits`, the whole default range a knock space (so
/// with one client or thousands only the trie differs), and the bench's
/// own sequence installed.
fn fixture(limits: &Limits) -> Result<Knock> {
    let mut knock = Knock::sized(limits)?;
    let space: std::collections::BTreeSet<ProtoPort> =
        (PORTS.0..=PORTS.1).map(|p| ProtoPort::new(Proto::Tcp, p)).collect();
    knock.maps.set_knock_space(&Default::default(), &space)?;
    knock.install_sequence()?;
    Ok(knock)
}

pub fn run(settings: &Settings) -> Result<Clients> {
    let limits = Limits { clients: settings.clients, ..Limits::DEFAULT };
    let mut out = Clients { clients: settings.clients, ..Default::default() };
    out.default_memlock = map_memlock(&mut Knock::new()?)?;
    let mut knock = fixture(&limits)?;
    out.sized_memlock = map_memlock(&mut knock)?;
    let mut noop_ebpf = load_noop()?;
    let noop = noop_prog(&mut noop_ebpf)?;
    let fam = &families()[0];

    let base = noop_baseline(noop, &tcp(fam.stranger, fam.server, 80, SYN), settings)?;
    out.rows.extend(fresh_rows(&mut knock, noop, settings, fam, 0x0010_0000, base, ", 1 client")?);

    let now = clock::boot_ns();
    let valid = (now.saturating_sub(1_000_000_000), now + 10 * HOUR_NS);
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let slot = unix / SLOT_SECS;
    (out.install_derive_ms, out.install_sync_ms, out.install_writes) =
        install_all(&mut knock, settings.clients, slot, valid)?;
    out.edges = knock.maps.edges()?.len();
    out.sequences = knock.maps.sequences()?.len();
    let label = format!(", {} clients", settings.clients);
    out.rows.extend(fresh_rows(&mut knock, noop, settings, fam, 0x0020_0000, base, &label)?);

    let mut rotation = rotate(&mut knock, settings.clients, slot, valid)?;
    out.failure = rotation.failure.take();
    if out.failure.is_some() {
        // Time the rotation where the maps have room for it: the same
        // clients in maps sized for a quarter more.
        let roomy = Limits { clients: settings.clients + settings.clients / 4, ..Limits::DEFAULT };
        knock = fixture(&roomy)?;
        install_all(&mut knock, settings.clients, slot, valid)?;
        rotation = rotate(&mut knock, settings.clients, slot, valid)?;
        if let Some(why) = rotation.failure.take() {
            bail!("the rotation failed even with room for {} clients: {why}", roomy.clients);
        }
        out.rotated_with_limit = roomy.clients;
    } else {
        out.rotated_with_limit = settings.clients;
    }
    out.rotate_derive_ms = rotation.derive_ms;
    out.rotate_sync_ms = rotation.sync_ms;
    out.rotate_writes = rotation.writes;

    // A rotated-in sequence opens the door, from a source of its own.
    let (_, _, steps) = rotation.next.last().ok_or_else(|| anyhow!("no client rotated"))?;
    let src = (fam.fresh)(0x0030_0000);
    for step in steps {
        let (verdict, _) = test_run(knock.prog()?, &tcp(src, fam.server, step.port, SYN), 1)?;
        ensure!(verdict == XDP_PASS, "a knock was not passed");
    }
    let key = knock_common::source::SourceKey::from(src);
    ensure!(
        knock.maps.allowed()?.iter().any(|(k, _)| *k == key),
        "a rotated-in sequence did not open the door"
    );
    Ok(out)
}
