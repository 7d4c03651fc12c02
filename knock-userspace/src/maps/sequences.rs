//! The sequences the program accepts, written by rotations (knock trie,
//! sequence slots, SPA keys), and what knocking leaves behind (knock states,
//! failed-knock words, used sequences, SPA nonces).

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use knock_common::{
    maps::{MAP_KNOCK_EDGES, MAP_USED},
    source::{PrefixKey, SourceKey},
    spa::{NonceKey, SpaKey},
    trie::{Edge, EdgeKey, KnockSink, KnockState, SequenceInfo, UsedKey},
};

use super::{KernelMaps, TEST_ABORT_AFTER_WRITES, removed};

impl KernelMaps {
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

    /// Records `key` as used, as the program does when its sequence opens.
    pub fn mark_used(&mut self, key: &UsedKey) -> Result<()> {
        self.used.insert(key, crate::clock::boot_ns(), 0).context("cannot write USED")
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
