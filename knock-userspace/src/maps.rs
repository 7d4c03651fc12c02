//! Userspace's typed handles on the program's maps: plain reads and writes.
//! The rules of what to write live in knock-common (the knock table builder)
//! and in the daemon's tasks.
//!
//! One struct holds every map; its methods are grouped by concern:
//! protected ports and the knock space (`ports`), who is let in
//! (`admission`: allow entries, networks, flows and the admission
//! filter), and the sequences the program accepts (`sequences`: knock
//! trie, slots, SPA keys, and what knocking leaves behind). Here: taking
//! the maps, counters, settings, the runtime words, and forgetting.

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, lpm_trie::LpmTrie},
};
use knock_common::{
    allow::AllowEntry,
    flow::{FlowEntry, FlowKey},
    maps::{
        Counter, MAP_ADMIT_FILTER, MAP_ALLOW, MAP_ALLOW_NETS, MAP_COUNTERS, MAP_FLOWS,
        MAP_KNOCK_EDGES, MAP_KNOCK_STATE, MAP_MISSES, MAP_PORT_FLAGS, MAP_RUNTIME, MAP_SEQUENCES,
        MAP_SETTINGS, MAP_SPA_KEYS, MAP_SPA_NONCES, MAP_USED, Runtime, Settings,
    },
    source::{NetKey, PrefixKey, SourceKey},
    spa::{NonceKey, SpaKey},
    trie::{Edge, EdgeKey, KnockState, SequenceInfo, UsedKey},
};

use crate::admit_filter::AdmitFilter;

mod admission;
mod ports;
mod sequences;

pub use admission::tcp_flow;

/// For the test suite only: with `KNOCK_XDP_TEST_ABORT_AFTER_WRITES=N` in
/// its environment (read once, when the daemon starts), the daemon kills
/// itself with SIGKILL, the death of `kill -9`, right after the N-th write
/// of a rotation to the knock tables, so a test can cut a rotation after
/// every one of its writes and show that the next daemon repairs it.
/// Without the variable nothing changes. It lives in the binary that ships
/// so the tests exercise exactly that binary; whoever can set a root
/// daemon's environment controls the daemon anyway.
pub const TEST_ABORT_AFTER_WRITES: &str = "KNOCK_XDP_TEST_ABORT_AFTER_WRITES";

pub struct KernelMaps {
    /// See [`TEST_ABORT_AFTER_WRITES`]: the write of a rotation to die
    /// after, and how many writes the current rotation has made.
    abort_after_write: Option<u32>,
    rotation_writes: u32,
    port_flags: Array<MapData, u32>,
    allow: HashMap<MapData, SourceKey, AllowEntry>,
    counters: PerCpuArray<MapData, u64>,
    knock_edges: HashMap<MapData, EdgeKey, Edge>,
    sequences: Array<MapData, SequenceInfo>,
    knock_state: HashMap<MapData, SourceKey, KnockState>,
    used: HashMap<MapData, UsedKey, u64>,
    misses: HashMap<MapData, PrefixKey, u64>,
    settings: Array<MapData, Settings>,
    runtime: Array<MapData, u64>,
    spa_keys: Array<MapData, SpaKey>,
    spa_nonces: HashMap<MapData, NonceKey, u64>,
    flows: HashMap<MapData, FlowKey, FlowEntry>,
    allow_nets: LpmTrie<MapData, NetKey, u32>,
    filter: AdmitFilter,
}

/// Removal that treats "already gone" as done.
fn removed(result: Result<(), MapError>, name: &str) -> Result<()> {
    match result {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(err) => Err(err).with_context(|| format!("cannot remove from {name}")),
    }
}

impl KernelMaps {
    /// Takes the maps out of a loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name).ok_or_else(|| anyhow!("the XDP object has no map named {name}"))
        };
        Ok(Self {
            abort_after_write: None,
            rotation_writes: 0,
            port_flags: Array::try_from(take(MAP_PORT_FLAGS)?)?,
            allow: HashMap::try_from(take(MAP_ALLOW)?)?,
            counters: PerCpuArray::try_from(take(MAP_COUNTERS)?)?,
            knock_edges: HashMap::try_from(take(MAP_KNOCK_EDGES)?)?,
            sequences: Array::try_from(take(MAP_SEQUENCES)?)?,
            knock_state: HashMap::try_from(take(MAP_KNOCK_STATE)?)?,
            used: HashMap::try_from(take(MAP_USED)?)?,
            misses: HashMap::try_from(take(MAP_MISSES)?)?,
            settings: Array::try_from(take(MAP_SETTINGS)?)?,
            runtime: Array::try_from(take(MAP_RUNTIME)?)?,
            spa_keys: Array::try_from(take(MAP_SPA_KEYS)?)?,
            spa_nonces: HashMap::try_from(take(MAP_SPA_NONCES)?)?,
            flows: HashMap::try_from(take(MAP_FLOWS)?)?,
            allow_nets: LpmTrie::try_from(take(MAP_ALLOW_NETS)?)?,
            filter: AdmitFilter::new(match take(MAP_ADMIT_FILTER)? {
                aya::maps::Map::Array(data) => data,
                _ => anyhow::bail!("{MAP_ADMIT_FILTER} is not an array"),
            })?,
        })
    }

    /// Each counter summed over all CPUs.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>> {
        Counter::ALL
            .iter()
            .map(|&counter| {
                let per_cpu =
                    self.counters.get(&(counter as u32), 0).context("cannot read COUNTERS")?;
                Ok((counter, per_cpu.iter().sum()))
            })
            .collect()
    }

    pub fn set_settings(&mut self, settings: Settings) -> Result<()> {
        self.settings.set(0, settings, 0).context("cannot write SETTINGS")
    }

    /// Writes a word of the runtime map (see [`Runtime`]).
    pub fn set_runtime(&mut self, word: Runtime, value: u64) -> Result<()> {
        self.runtime.set(word as u32, value, 0).context("cannot write RUNTIME")
    }

    /// Reads a word of the runtime map.
    pub fn runtime(&self, word: Runtime) -> Result<u64> {
        self.runtime.get(&(word as u32), 0).context("cannot read RUNTIME")
    }

    /// How many clients the kernel's maps were made for: the sequence
    /// array holds [`SLOTS_PER_CLIENT`] per client. (Maps taken over from an
    /// earlier run keep the size they were made with.)
    pub fn client_capacity(&self) -> u32 {
        self.sequences.len() / knock_common::maps::SLOTS_PER_CLIENT
    }

    /// Forgets every source, flow, knock in progress, failed-knock record
    /// and used sequence, and every installed sequence; protected ports and
    /// settings stay.
    pub fn forget_runtime_state(&mut self) -> Result<()> {
        fn clear<K: aya::Pod, V: aya::Pod>(
            map: &mut HashMap<MapData, K, V>,
            name: &str,
        ) -> Result<()> {
            let keys: Vec<K> = map.keys().filter_map(|k| k.ok()).collect();
            for key in keys {
                removed(map.remove(&key), name)?;
            }
            Ok(())
        }
        clear(&mut self.allow, MAP_ALLOW)?;
        clear(&mut self.flows, MAP_FLOWS)?;
        clear(&mut self.knock_state, MAP_KNOCK_STATE)?;
        clear(&mut self.used, MAP_USED)?;
        clear(&mut self.misses, MAP_MISSES)?;
        clear(&mut self.spa_nonces, MAP_SPA_NONCES)?;
        clear(&mut self.knock_edges, MAP_KNOCK_EDGES)?;
        for (index, _) in self.sequences()? {
            self.sequences
                .set(index, SequenceInfo::default(), 0)
                .context("cannot write SEQUENCES")?;
        }
        Ok(())
    }
}
