//! Userspace's typed view of the program's maps.

use std::{collections::BTreeSet, net::IpAddr};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray},
};
use knock_common::{
    maps::{
        ALLOW_MAX_ENTRIES, AllowEntry, Counter, MAP_ALLOW, MAP_COUNTERS, MAP_PORT_FLAGS, SourceKey,
    },
    verdict::Transport,
};

use crate::ports::ProtoPort;

pub struct Tables {
    port_flags: Array<MapData, u32>,
    allow: HashMap<MapData, SourceKey, AllowEntry>,
    counters: PerCpuArray<MapData, u64>,
}

impl Tables {
    /// Takes the maps out of a loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("the XDP object has no map named {name}"))
        };
        Ok(Self {
            port_flags: Array::try_from(take(MAP_PORT_FLAGS)?)?,
            allow: HashMap::try_from(take(MAP_ALLOW)?)?,
            counters: PerCpuArray::try_from(take(MAP_COUNTERS)?)?,
        })
    }

    /// Makes exactly `protected` protected, touching only the ports that
    /// change (and leaving any other flag bits of those ports alone).
    pub fn set_protected(
        &mut self,
        before: &BTreeSet<ProtoPort>,
        protected: &BTreeSet<ProtoPort>,
    ) -> Result<()> {
        let ports: BTreeSet<u16> = before.iter().chain(protected).map(|p| p.port).collect();
        for port in ports {
            let mut flags = self
                .port_flags
                .get(&u32::from(port), 0)
                .context("cannot read PORT_FLAGS")?;
            for proto in [Transport::Tcp, Transport::Udp] {
                let bit = proto.protected_flag();
                if protected.contains(&ProtoPort {
                    port,
                    proto: proto.into(),
                }) {
                    flags |= bit;
                } else {
                    flags &= !bit;
                }
            }
            self.port_flags
                .set(u32::from(port), flags, 0)
                .context("cannot write PORT_FLAGS")?;
        }
        Ok(())
    }

    /// The ports currently protected, read back from the kernel.
    pub fn protected(&self) -> Result<BTreeSet<ProtoPort>> {
        let mut out = BTreeSet::new();
        for (port, flags) in self.port_flags.iter().enumerate() {
            let flags = flags.context("cannot read PORT_FLAGS")?;
            for proto in [Transport::Tcp, Transport::Udp] {
                if flags & proto.protected_flag() != 0 {
                    out.insert(ProtoPort {
                        port: port as u16,
                        proto: proto.into(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Admits `addr` until `deadline_ns` (boot clock).
    pub fn allow(&mut self, addr: IpAddr, deadline_ns: u64, origin: u32) -> Result<()> {
        let entry = AllowEntry {
            deadline_ns,
            origin,
            client: 0,
        };
        self.allow
            .insert(SourceKey::from(addr), entry, 0)
            .map_err(|err| match err {
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
        self.allow
            .iter()
            .map(|entry| entry.context("cannot read ALLOW"))
            .collect()
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
                let per_cpu = self
                    .counters
                    .get(&(counter as u32), 0)
                    .context("cannot read COUNTERS")?;
                Ok((counter, per_cpu.iter().sum()))
            })
            .collect()
    }
}
