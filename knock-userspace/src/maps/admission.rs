//! Who is let in: allow entries, always-allowed networks, followed flows,
//! and the admission filter that summarises the first and the last.

use std::{collections::BTreeSet, net::IpAddr};

use anyhow::{Context as _, Result, anyhow};
use aya::maps::{MapError, lpm_trie::Key};
use knock_common::{
    Proto,
    allow::{AllowEntry, AllowOrigin},
    flow::{FlowEntry, FlowKey},
    maps::{
        ALLOW_MAX_ENTRIES, ALLOW_NETS_MAX_ENTRIES, MAP_ALLOW, MAP_ALLOW_NETS, MAP_FLOWS, Runtime,
    },
    source::{NetKey, SourceKey},
};

use super::{KernelMaps, removed};
use crate::{clock, nets::Cidr};

/// `BPF_NOEXIST` (linux/bpf.h): an update that writes only a missing key.
const BPF_NOEXIST: u64 = 1;

impl KernelMaps {
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

    /// Follows already established TCP connections (to a port about to be
    /// protected) as if they had been admitted now; their first packet
    /// teaches the flow its sequence numbers.
    pub fn seed_flows(&mut self, keys: &[FlowKey]) -> Result<()> {
        for key in keys {
            let entry = FlowEntry { last_seen_ns: clock::flow_ns(), ..FlowEntry::default() };
            // A flow the kernel already follows (after a take-over) keeps its
            // client and sequence tracking: only missing ones are written.
            match self.flows.insert(key, entry, BPF_NOEXIST) {
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                written => written.context("cannot write FLOWS")?,
            }
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
}

/// The trie key of a network: the family byte counts in the prefix.
fn net_key(net: &Cidr) -> Key<NetKey> {
    Key::new(8 + u32::from(net.prefix()), NetKey::of(&SourceKey::from(net.addr())))
}

/// A TCP flow key, for seeding established connections.
pub fn tcp_flow(src: IpAddr, src_port: u16, dst_port: u16) -> FlowKey {
    FlowKey::new(SourceKey::from(src), src_port, dst_port, Proto::Tcp)
}
