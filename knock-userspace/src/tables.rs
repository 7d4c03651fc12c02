//! Userspace's typed view of the program's maps.

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
    maps::{
        ALLOW_MAX_ENTRIES, AllowEntry, Config, Counter, FlowEntry, FlowKey, KnockState, MAP_ALLOW,
        MAP_ALLOW_NETS, MAP_CONFIG, MAP_COUNTERS, MAP_FLOWS, MAP_KNOCK_STATE, MAP_KNOCK_STEPS,
        MAP_PORT_FLAGS, MAP_SEQUENCES, MAP_USED, NetKey, PROTO_TCP, SequenceInfo, SourceKey,
        StepEntry, StepKey, UsedKey,
    },
    verdict::Transport,
};

use crate::{nets::Cidr, ports::ProtoPort};

pub struct Tables {
    port_flags: Array<MapData, u32>,
    allow: HashMap<MapData, SourceKey, AllowEntry>,
    counters: PerCpuArray<MapData, u64>,
    knock_steps: HashMap<MapData, StepKey, StepEntry>,
    sequences: Array<MapData, SequenceInfo>,
    knock_state: HashMap<MapData, SourceKey, KnockState>,
    used: HashMap<MapData, UsedKey, u64>,
    config: Array<MapData, Config>,
    flows: HashMap<MapData, FlowKey, FlowEntry>,
    allow_nets: LpmTrie<MapData, NetKey, u32>,
}

impl Tables {
    /// Takes the maps out of a loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name).ok_or_else(|| anyhow!("the XDP object has no map named {name}"))
        };
        Ok(Self {
            port_flags: Array::try_from(take(MAP_PORT_FLAGS)?)?,
            allow: HashMap::try_from(take(MAP_ALLOW)?)?,
            counters: PerCpuArray::try_from(take(MAP_COUNTERS)?)?,
            knock_steps: HashMap::try_from(take(MAP_KNOCK_STEPS)?)?,
            sequences: Array::try_from(take(MAP_SEQUENCES)?)?,
            knock_state: HashMap::try_from(take(MAP_KNOCK_STATE)?)?,
            used: HashMap::try_from(take(MAP_USED)?)?,
            config: Array::try_from(take(MAP_CONFIG)?)?,
            flows: HashMap::try_from(take(MAP_FLOWS)?)?,
            allow_nets: LpmTrie::try_from(take(MAP_ALLOW_NETS)?)?,
        })
    }

    /// Makes exactly `protected` protected, touching only the ports that
    /// change (and leaving the other flag bits of those ports alone).
    pub fn set_protected(
        &mut self,
        before: &BTreeSet<ProtoPort>,
        protected: &BTreeSet<ProtoPort>,
    ) -> Result<()> {
        self.set_port_bits(before, protected, Transport::protected_flag)
    }

    /// Marks exactly `knock_ports` as knock ports.
    pub fn set_knock_ports(
        &mut self,
        before: &BTreeSet<ProtoPort>,
        knock_ports: &BTreeSet<ProtoPort>,
    ) -> Result<()> {
        self.set_port_bits(before, knock_ports, Transport::knock_flag)
    }

    fn set_port_bits(
        &mut self,
        before: &BTreeSet<ProtoPort>,
        after: &BTreeSet<ProtoPort>,
        bit_of: fn(Transport) -> u32,
    ) -> Result<()> {
        let ports: BTreeSet<u16> = before.symmetric_difference(after).map(|p| p.port).collect();
        for port in ports {
            let mut flags =
                self.port_flags.get(&u32::from(port), 0).context("cannot read PORT_FLAGS")?;
            for proto in [Transport::Tcp, Transport::Udp] {
                if after.contains(&ProtoPort { port, proto: proto.into() }) {
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
        self.ports_flagged(Transport::protected_flag)
    }

    /// The ports currently flagged as knock ports, read back from the kernel.
    pub fn knock_ports(&self) -> Result<BTreeSet<ProtoPort>> {
        self.ports_flagged(Transport::knock_flag)
    }

    fn ports_flagged(&self, bit_of: fn(Transport) -> u32) -> Result<BTreeSet<ProtoPort>> {
        let mut out = BTreeSet::new();
        for (port, flags) in self.port_flags.iter().enumerate() {
            let flags = flags.context("cannot read PORT_FLAGS")?;
            for proto in [Transport::Tcp, Transport::Udp] {
                if flags & bit_of(proto) != 0 {
                    out.insert(ProtoPort { port: port as u16, proto: proto.into() });
                }
            }
        }
        Ok(out)
    }

    /// Admits `addr` until `deadline_ns` (boot clock).
    pub fn allow(&mut self, addr: IpAddr, deadline_ns: u64, origin: u32) -> Result<()> {
        let entry = AllowEntry { deadline_ns, origin, client: 0 };
        self.allow.insert(SourceKey::from(addr), entry, 0).map_err(|err| match err {
            MapError::SyscallError(ref e) if e.io_error.raw_os_error() == Some(libc::E2BIG) => {
                anyhow!("the allow map is full ({ALLOW_MAX_ENTRIES} sources)")
            }
            err => anyhow::Error::new(err).context("cannot write ALLOW"),
        })
    }

    /// Removes `addr`; false when it was not there.
    pub fn revoke(&mut self, addr: IpAddr) -> Result<bool> {
        match self.allow.remove(&SourceKey::from(addr)) {
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

    /// Deletes the entries whose deadline has passed and returns their sources.
    /// The kernel already ignores them; this only frees the slots.
    pub fn sweep(&mut self, now_ns: u64) -> Result<Vec<SourceKey>> {
        let expired: Vec<SourceKey> = self
            .allowed()?
            .into_iter()
            .filter(|(_, entry)| entry.deadline_ns <= now_ns)
            .map(|(key, _)| key)
            .collect();
        for key in &expired {
            match self.allow.remove(key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(err) => return Err(err).context("cannot remove from ALLOW"),
            }
        }
        Ok(expired)
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

    pub fn set_config(&mut self, config: Config) -> Result<()> {
        self.config.set(0, config, 0).context("cannot write CONFIG")
    }

    pub fn set_sequence(&mut self, index: u32, info: SequenceInfo) -> Result<()> {
        self.sequences.set(index, info, 0).context("cannot write SEQUENCES")
    }

    pub fn set_step(&mut self, key: StepKey, entry: StepEntry) -> Result<()> {
        self.knock_steps.insert(key, entry, 0).context("cannot write KNOCK_STEPS")
    }

    pub fn remove_step(&mut self, key: &StepKey) -> Result<()> {
        match self.knock_steps.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(err) => Err(err).context("cannot remove from KNOCK_STEPS"),
        }
    }

    /// Every installed step entry.
    pub fn steps(&self) -> Result<BTreeMap<StepKey, StepEntry>> {
        self.knock_steps.iter().map(|entry| entry.context("cannot read KNOCK_STEPS")).collect()
    }

    /// Every sequence slot, installed or free.
    pub fn sequences(&self) -> Result<Vec<(u32, SequenceInfo)>> {
        (0..knock_common::maps::MAX_SEQUENCES)
            .map(|index| {
                Ok((index, self.sequences.get(&index, 0).context("cannot read SEQUENCES")?))
            })
            .collect()
    }

    /// The always-allowed networks in the kernel.
    pub fn allowed_nets(&self) -> Result<BTreeSet<Cidr>> {
        let mut nets = BTreeSet::new();
        for key in self.allow_nets.keys() {
            let key = key.context("cannot read ALLOW_NETS")?;
            let data = key.data();
            let src = SourceKey { family: data.family, _pad: [0; 3], addr: data.addr };
            if let (Some(addr), Some(prefix)) = (src.ip(), key.prefix_len().checked_sub(8)) {
                nets.insert(Cidr { addr, prefix: prefix as u8 });
            }
        }
        Ok(nets)
    }

    /// Forgets used-sequence records that `keep` rejects.
    pub fn prune_used(&mut self, keep: impl Fn(&UsedKey) -> bool) -> Result<()> {
        let stale: Vec<UsedKey> =
            self.used.keys().filter_map(|k| k.ok()).filter(|k| !keep(k)).collect();
        for key in stale {
            match self.used.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(err) => return Err(err).context("cannot remove from USED"),
            }
        }
        Ok(())
    }

    /// Knocks in progress (entries of the LRU state map, finished ones included).
    pub fn knock_states(&self) -> usize {
        self.knock_state.keys().filter(|k| k.is_ok()).count()
    }

    /// Follows already established TCP connections (to a port about to be
    /// protected) as if they had been admitted now.
    pub fn seed_flows(&mut self, keys: &[FlowKey], now_ns: u64) -> Result<()> {
        for key in keys {
            let entry = FlowEntry { last_seen_ns: now_ns, closing_until_ns: 0 };
            self.flows.insert(key, entry, 0).context("cannot write FLOWS")?;
        }
        Ok(())
    }

    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowEntry)>> {
        self.flows.iter().map(|entry| entry.context("cannot read FLOWS")).collect()
    }

    /// Ends every flow whose source matches; returns how many.
    pub fn end_flows(&mut self, matches: impl Fn(&FlowKey) -> bool) -> Result<usize> {
        let doomed: Vec<FlowKey> =
            self.flows.keys().filter_map(|k| k.ok()).filter(|k| matches(k)).collect();
        for key in &doomed {
            match self.flows.remove(key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(err) => return Err(err).context("cannot remove from FLOWS"),
            }
        }
        Ok(doomed.len())
    }

    /// Makes exactly `nets` always allowed.
    pub fn set_allowed_nets(
        &mut self,
        before: &BTreeSet<Cidr>,
        nets: &BTreeSet<Cidr>,
    ) -> Result<()> {
        for net in nets.difference(before) {
            self.allow_nets
                .insert(&net_key(net), 1, 0)
                .with_context(|| format!("cannot allow {net}"))?;
        }
        for net in before.difference(nets) {
            match self.allow_nets.remove(&net_key(net)) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(err) => return Err(err).with_context(|| format!("cannot remove {net}")),
            }
        }
        Ok(())
    }
}

impl Tables {
    /// Forgets every source, flow, knock in progress and used sequence, and
    /// every installed sequence; protected ports and settings stay.
    pub fn forget_runtime_state(&mut self) -> Result<()> {
        fn clear<K: aya::Pod, V: aya::Pod>(
            map: &mut HashMap<MapData, K, V>,
            name: &str,
        ) -> Result<()> {
            let keys: Vec<K> = map.keys().filter_map(|k| k.ok()).collect();
            for key in keys {
                match map.remove(&key) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(err) => return Err(err).with_context(|| format!("cannot clear {name}")),
                }
            }
            Ok(())
        }
        clear(&mut self.allow, MAP_ALLOW)?;
        clear(&mut self.flows, MAP_FLOWS)?;
        clear(&mut self.knock_state, MAP_KNOCK_STATE)?;
        clear(&mut self.used, MAP_USED)?;
        clear(&mut self.knock_steps, MAP_KNOCK_STEPS)?;
        for index in 0..knock_common::maps::MAX_SEQUENCES {
            self.set_sequence(index, SequenceInfo::default())?;
        }
        Ok(())
    }
}

/// The trie key of a network: the family byte counts in the prefix.
fn net_key(net: &Cidr) -> Key<NetKey> {
    Key::new(8 + u32::from(net.prefix), NetKey::of(&SourceKey::from(net.addr)))
}

/// A TCP flow key, for seeding established connections.
pub fn tcp_flow(src: IpAddr, src_port: u16, dst_port: u16) -> FlowKey {
    FlowKey { src: SourceKey::from(src), src_port, dst_port, proto: PROTO_TCP, _pad: [0; 3] }
}
