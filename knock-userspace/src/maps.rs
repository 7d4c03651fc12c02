//! Userspace's typed handles on the program's maps: plain reads and writes.
//! The rules of what to write live in knock-common (the knock table builder)
//! and in the daemon's tasks.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{
        Array, HashMap, MapData, MapError, PerCpuArray,
        lpm_trie::{Key, LpmTrie},
    },
};
use knock_common::{
    Proto, ProtoPort,
    allow::{AllowEntry, AllowOrigin},
    flow::{FlowEntry, FlowKey},
    maps::{
        ALLOW_MAX_ENTRIES, ALLOW_NETS_MAX_ENTRIES, Counter, MAP_ADMIT_FILTER, MAP_ALLOW,
        MAP_ALLOW_NETS, MAP_COUNTERS, MAP_FLOWS, MAP_KNOCK_EDGES, MAP_KNOCK_STATE, MAP_MISSES,
        MAP_PORT_FLAGS, MAP_RUNTIME, MAP_SEQUENCES, MAP_SETTINGS, MAP_SPA_KEYS, MAP_SPA_NONCES,
        MAP_USED, Runtime, Settings, port_flags,
    },
    source::{NetKey, PrefixKey, SourceKey},
    spa::{NonceKey, SpaKey},
    trie::{Edge, EdgeKey, KnockSink, KnockState, SequenceInfo, UsedKey},
};

use crate::{admit_filter::AdmitFilter, clock, nets::Cidr};

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

    /// Makes exactly `protected` protected, touching only the ports that
    /// change (and leaving the other flag bits of those ports alone).
    pub fn set_protected(
        &mut self,
        before: &BTreeSet<ProtoPort>,
        protected: &BTreeSet<ProtoPort>,
    ) -> Result<()> {
        self.set_port_bits(before, protected, Proto::protected_flag)
    }

    /// Makes exactly `space` the knock space.
    pub fn set_knock_space(
        &mut self,
        before: &BTreeSet<ProtoPort>,
        space: &BTreeSet<ProtoPort>,
    ) -> Result<()> {
        self.set_port_bits(before, space, Proto::knock_space_flag)
    }

    /// Makes exactly `ports` the SPA ports (UDP).
    pub fn set_spa_ports(
        &mut self,
        before: &BTreeSet<ProtoPort>,
        ports: &BTreeSet<ProtoPort>,
    ) -> Result<()> {
        self.set_port_bits(before, ports, |proto| match proto {
            Proto::Udp => port_flags::SPA_UDP,
            Proto::Tcp => 0,
        })
    }

    /// The SPA ports, read back from the kernel.
    pub fn spa_ports(&self) -> Result<BTreeSet<ProtoPort>> {
        self.ports_flagged(|proto| match proto {
            Proto::Udp => port_flags::SPA_UDP,
            Proto::Tcp => 0,
        })
    }

    fn set_port_bits(
        &mut self,
        before: &BTreeSet<ProtoPort>,
        after: &BTreeSet<ProtoPort>,
        bit_of: fn(Proto) -> u32,
    ) -> Result<()> {
        let ports: BTreeSet<u16> = before.symmetric_difference(after).map(|p| p.port).collect();
        for port in ports {
            let mut flags =
                self.port_flags.get(&u32::from(port), 0).context("cannot read PORT_FLAGS")?;
            for proto in Proto::ALL.into_iter().filter(|p| bit_of(*p) != 0) {
                if after.contains(&ProtoPort::new(proto, port)) {
                    flags |= bit_of(proto);
                } else {
                    flags &= !bit_of(proto);
                }
            }
            self.port_flags.set(u32::from(port), flags, 0).context("cannot write PORT_FLAGS")?;
        }
        Ok(())
    }

    /// The ports currently protected, read back from the kernel.
    pub fn protected(&self) -> Result<BTreeSet<ProtoPort>> {
        self.ports_flagged(Proto::protected_flag)
    }

    /// The knock space, read back from the kernel.
    pub fn knock_space(&self) -> Result<BTreeSet<ProtoPort>> {
        self.ports_flagged(Proto::knock_space_flag)
    }

    fn ports_flagged(&self, bit_of: fn(Proto) -> u32) -> Result<BTreeSet<ProtoPort>> {
        let mut out = BTreeSet::new();
        for (port, flags) in self.port_flags.iter().enumerate() {
            let flags = flags.context("cannot read PORT_FLAGS")?;
            for proto in Proto::ALL {
                if bit_of(proto) != 0 && flags & bit_of(proto) != 0 {
                    out.insert(ProtoPort::new(proto, port as u16));
                }
            }
        }
        Ok(out)
    }

    /// Admits `addr` until `deadline_ns` (boot clock), by hand.
    pub fn allow(&mut self, addr: IpAddr, deadline_ns: u64) -> Result<()> {
        let entry = AllowEntry { deadline_ns, origin: AllowOrigin::Manual as u32, client: 0 };
        let key = SourceKey::from(addr);
        self.allow.insert(key, entry, 0).map_err(|err| match err {
            MapError::SyscallError(ref e) if e.io_error.raw_os_error() == Some(libc::E2BIG) => {
                anyhow!("the allow map is full ({ALLOW_MAX_ENTRIES} sources)")
            }
            err => anyhow::Error::new(err).context("cannot write ALLOW"),
        })?;
        self.filter.mark(&key);
        Ok(())
    }

    /// Removes `key`; false when it was not there.
    pub fn revoke(&mut self, key: &SourceKey) -> Result<bool> {
        match self.allow.remove(key) {
            Ok(()) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(false)
            }
            Err(err) => Err(err).context("cannot remove from ALLOW"),
        }
    }

    /// Every allow entry, expired or not.
    pub fn allowed(&self) -> Result<Vec<(SourceKey, AllowEntry)>> {
        self.allow.iter().map(|entry| entry.context("cannot read ALLOW")).collect()
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

    /// Every client index's SPA key (free ones have client 0).
    pub fn spa_keys(&self) -> Result<BTreeMap<u32, SpaKey>> {
        let mut out = BTreeMap::new();
        for (index, key) in self.spa_keys.iter().enumerate() {
            let key = key.context("cannot read SPA_KEYS")?;
            if key.client != 0 {
                out.insert(index as u32, key);
            }
        }
        Ok(out)
    }

    /// Writes a client index's SPA key; [`SpaKey::default`] frees it.
    pub fn set_spa_key(&mut self, index: u32, key: &SpaKey) -> Result<()> {
        self.spa_keys.set(index, key, 0).context("cannot write SPA_KEYS")
    }

    /// Every SPA nonce remembered.
    pub fn spa_nonces(&self) -> Result<Vec<(NonceKey, u64)>> {
        self.spa_nonces.iter().map(|entry| entry.context("cannot read SPA_NONCES")).collect()
    }

    /// How many clients the kernel's maps were made for: the sequence
    /// array holds [`SLOTS_PER_CLIENT`] per client. (Maps taken over from an
    /// earlier run keep the size they were made with.)
    pub fn client_capacity(&self) -> u32 {
        self.sequences.len() / knock_common::maps::SLOTS_PER_CLIENT
    }

    /// Every trie edge.
    pub fn edges(&self) -> Result<BTreeMap<EdgeKey, Edge>> {
        self.knock_edges.iter().map(|entry| entry.context("cannot read KNOCK_EDGES")).collect()
    }

    /// Every sequence slot that is in use.
    pub fn sequences(&self) -> Result<Vec<(u32, SequenceInfo)>> {
        let mut out = Vec::new();
        for (index, info) in self.sequences.iter().enumerate() {
            let info = info.context("cannot read SEQUENCES")?;
            if info.valid_until_ns != 0 {
                out.push((index as u32, info));
            }
        }
        Ok(out)
    }

    /// The always-allowed networks in the kernel.
    pub fn allowed_nets(&self) -> Result<BTreeSet<Cidr>> {
        let mut nets = BTreeSet::new();
        for key in self.allow_nets.keys() {
            let key = key.context("cannot read ALLOW_NETS")?;
            let data = key.data();
            let src = SourceKey { family: data.family, _pad: [0; 3], addr: data.addr };
            let prefix = key.prefix_len().checked_sub(8).and_then(|p| u8::try_from(p).ok());
            if let Some(net) =
                src.ip().zip(prefix).and_then(|(addr, prefix)| Cidr::new(addr, prefix))
            {
                nets.insert(net);
            }
        }
        Ok(nets)
    }

    /// Forgets used-sequence records that `keep` rejects.
    pub fn prune_used(&mut self, keep: impl Fn(&UsedKey) -> bool) -> Result<()> {
        let stale: Vec<UsedKey> =
            self.used.keys().filter_map(|k| k.ok()).filter(|k| !keep(k)).collect();
        for key in stale {
            removed(self.used.remove(&key), MAP_USED)?;
        }
        Ok(())
    }

    /// Entries of the knock-state map (finished knocks included).
    pub fn knock_states(&self) -> Result<Vec<(SourceKey, KnockState)>> {
        self.knock_state.iter().map(|entry| entry.context("cannot read KNOCK_STATE")).collect()
    }

    /// Every source prefix's failed-knock word.
    pub fn misses(&self) -> Result<Vec<(PrefixKey, u64)>> {
        self.misses.iter().map(|entry| entry.context("cannot read MISSES")).collect()
    }

    /// Every used-sequence record.
    pub fn used(&self) -> Result<Vec<(UsedKey, u64)>> {
        self.used.iter().map(|entry| entry.context("cannot read USED")).collect()
    }

    /// Follows already established TCP connections (to a port about to be
    /// protected) as if they had been admitted now; their first packet
    /// teaches the flow its sequence numbers.
    pub fn seed_flows(&mut self, keys: &[FlowKey]) -> Result<()> {
        for key in keys {
            let entry = FlowEntry { last_seen_ns: clock::flow_ns(), ..FlowEntry::default() };
            self.flows.insert(key, entry, 0).context("cannot write FLOWS")?;
            self.filter.mark(&key.src);
        }
        Ok(())
    }

    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowEntry)>> {
        self.flows.iter().map(|entry| entry.context("cannot read FLOWS")).collect()
    }

    /// Ends every flow `matches` picks; returns how many.
    pub fn end_flows(&mut self, matches: impl Fn(&FlowKey, &FlowEntry) -> bool) -> Result<usize> {
        let doomed: Vec<FlowKey> = self
            .flows
            .iter()
            .filter_map(|entry| entry.ok())
            .filter(|(key, entry)| matches(key, entry))
            .map(|(key, _)| key)
            .collect();
        for key in &doomed {
            removed(self.flows.remove(key), MAP_FLOWS)?;
        }
        Ok(doomed.len())
    }

    /// Deletes allow entries `doomed` picks; returns their sources.
    pub fn remove_allowed(
        &mut self,
        doomed: impl Fn(&SourceKey, &AllowEntry) -> bool,
    ) -> Result<Vec<SourceKey>> {
        let keys: Vec<SourceKey> = self
            .allowed()?
            .into_iter()
            .filter(|(key, entry)| doomed(key, entry))
            .map(|(key, _)| key)
            .collect();
        for key in &keys {
            removed(self.allow.remove(key), MAP_ALLOW)?;
        }
        Ok(keys)
    }

    /// Makes exactly `nets` always allowed.
    pub fn set_allowed_nets(
        &mut self,
        before: &BTreeSet<Cidr>,
        nets: &BTreeSet<Cidr>,
    ) -> Result<()> {
        for net in nets.difference(before) {
            self.allow_nets.insert(&net_key(net), 1, 0).map_err(|err| match err {
                // A full LPM trie says ENOSPC, a full hash map E2BIG.
                MapError::SyscallError(ref e)
                    if matches!(e.io_error.raw_os_error(), Some(libc::ENOSPC | libc::E2BIG)) =>
                {
                    anyhow!(
                        "cannot allow {net}: the always-allowed networks are full ({ALLOW_NETS_MAX_ENTRIES} networks); revoke one first"
                    )
                }
                err => anyhow::Error::new(err).context(format!("cannot allow {net}")),
            })?;
        }
        for net in before.difference(nets) {
            removed(self.allow_nets.remove(&net_key(net)), MAP_ALLOW_NETS)
                .with_context(|| format!("cannot remove {net}"))?;
        }
        // Counted after the trie is written, so the program never skips a
        // network it holds.
        self.set_runtime(Runtime::Networks, nets.len() as u64)
    }

    /// How many slots the admission filter's live half has set.
    pub fn filter_load(&self) -> Result<usize> {
        Ok(self.filter.set_slots(self.runtime(Runtime::FilterHalf)?))
    }

    /// Rebuilds the admission filter: clears the half the program does not
    /// read, sets the slots of every allow entry and flow, and switches the
    /// program over (see `knock_common::filter` for why no admitted source
    /// is ever missed). Returns the slots set.
    pub fn rebuild_filter(&mut self) -> Result<usize> {
        let next = 1 - (self.runtime(Runtime::FilterHalf)? & 1);
        self.filter.clear(next);
        for (src, _) in self.allowed()? {
            self.filter.mark_in(next, &src);
        }
        for (key, _) in self.flows()? {
            self.filter.mark_in(next, &key.src);
        }
        self.set_runtime(Runtime::FilterHalf, next)?;
        Ok(self.filter.set_slots(next))
    }

    /// Whether the admission filter's live half has the slot of `src` set.
    pub fn filter_admits(&self, src: &SourceKey) -> Result<bool> {
        Ok(self.filter.is_marked(self.runtime(Runtime::FilterHalf)?, src))
    }

    /// Reads a word of the runtime map.
    pub fn runtime(&self, word: Runtime) -> Result<u64> {
        self.runtime.get(&(word as u32), 0).context("cannot read RUNTIME")
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

impl KernelMaps {
    /// Arms (or, with `None`, disarms) the test hook of
    /// [`TEST_ABORT_AFTER_WRITES`].
    pub fn abort_after_write(&mut self, write: Option<u32>) {
        self.abort_after_write = write;
    }

    /// A rotation begins: the test hook counts its writes from here.
    pub fn rotation_begins(&mut self) {
        self.rotation_writes = 0;
    }

    /// Counts a write to the knock tables, and dies after the one the test
    /// hook names.
    fn wrote(&mut self) {
        self.rotation_writes += 1;
        if self.abort_after_write == Some(self.rotation_writes) {
            tracing::error!(
                "test hook {TEST_ABORT_AFTER_WRITES}: killed after map write {} of a rotation",
                self.rotation_writes
            );
            // SAFETY: plain kill(2) on this process.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
    }
}

impl KnockSink for KernelMaps {
    type Error = anyhow::Error;

    fn set_edge(&mut self, key: &EdgeKey, edge: &Edge) -> Result<()> {
        self.knock_edges.insert(key, edge, 0).context("cannot write KNOCK_EDGES")?;
        self.wrote();
        Ok(())
    }

    fn remove_edge(&mut self, key: &EdgeKey) -> Result<()> {
        removed(self.knock_edges.remove(key), MAP_KNOCK_EDGES)?;
        self.wrote();
        Ok(())
    }

    fn set_sequence(&mut self, index: u32, info: &SequenceInfo) -> Result<()> {
        self.sequences.set(index, info, 0).context("cannot write SEQUENCES")?;
        self.wrote();
        Ok(())
    }
}

/// The trie key of a network: the family byte counts in the prefix.
fn net_key(net: &Cidr) -> Key<NetKey> {
    Key::new(8 + u32::from(net.prefix()), NetKey::of(&SourceKey::from(net.addr())))
}

/// A TCP flow key, for seeding established connections.
pub fn tcp_flow(src: IpAddr, src_port: u16, dst_port: u16) -> FlowKey {
    FlowKey::new(SourceKey::from(src), src_port, dst_port, Proto::Tcp)
}
