//! The one builder of the knock maps: the daemon, the reference model, the
//! program tests and the benchmark all install sequences through it.
//!
//! A [`KnockTable`] holds the sequences that should be installed and what the
//! maps hold now, and [`KnockTable::sync`] writes only the difference. Node ids
//! of edges that stay keep their value (also those read back from the maps on
//! a take-over), so knocks in progress survive rotations and restarts; new
//! ids are handed out in increasing order, so a freed id is not reused for
//! 2^32 allocations and a knock in progress can never wander onto another
//! sequence's path.

extern crate std;

use std::{
    collections::{BTreeMap, BTreeSet},
    vec::Vec,
};

use super::{Edge, EdgeKey, KnockState, MAX_FINISHERS, ROOT, SequenceInfo};
use crate::{maps::MAX_KNOCK_STEPS, proto::ProtoPort};

/// Where [`KnockTable::sync`] writes: the kernel's maps, or the model's.
pub trait KnockSink {
    type Error;
    fn set_edge(&mut self, key: &EdgeKey, edge: &Edge) -> Result<(), Self::Error>;
    fn remove_edge(&mut self, key: &EdgeKey) -> Result<(), Self::Error>;
    /// Writes a sequence; [`SequenceInfo::default`] retires the index.
    fn set_sequence(&mut self, index: u32, info: &SequenceInfo) -> Result<(), Self::Error>;
}

/// Why a sequence cannot be installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstallError {
    /// No knocks, or more than [`MAX_KNOCK_STEPS`].
    BadLength,
    /// [`MAX_FINISHERS`] identical sequences are installed already.
    TooManyIdentical,
}

impl core::fmt::Display for InstallError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            InstallError::BadLength => {
                write!(f, "a sequence has 1 to {MAX_KNOCK_STEPS} knocks")
            }
            InstallError::TooManyIdentical => write!(
                f,
                "{MAX_FINISHERS} identical sequences are installed already (give this client other ports)"
            ),
        }
    }
}

impl core::error::Error for InstallError {}

#[derive(Clone, Debug)]
struct Installed {
    info: SequenceInfo,
    steps: Vec<ProtoPort>,
    /// The edges of its path, root first.
    path: Vec<EdgeKey>,
}

#[derive(Clone, Debug, Default)]
pub struct KnockTable {
    /// What should be installed.
    sequences: BTreeMap<u32, Installed>,
    edges: BTreeMap<EdgeKey, Edge>,
    /// The sequences whose path takes each edge.
    through: BTreeMap<EdgeKey, BTreeSet<u32>>,
    /// What the maps hold.
    written_edges: BTreeMap<EdgeKey, Edge>,
    written_sequences: BTreeMap<u32, SequenceInfo>,
    /// Node ids of the wanted edges, and of the written ones.
    wanted_nodes: BTreeSet<u32>,
    written_nodes: BTreeSet<u32>,
    next_node: u32,
}

impl KnockTable {
    pub fn new() -> Self {
        Self { next_node: ROOT + 1, ..Self::default() }
    }

    /// Starts from what the maps hold (a daemon taking over from one that
    /// was killed): the first [`sync`](Self::sync) removes what is no longer
    /// wanted, repairs what a cut-short write left half done, and rewrites
    /// nothing that stays.
    pub fn adopt(
        edges: impl IntoIterator<Item = (EdgeKey, Edge)>,
        sequences: impl IntoIterator<Item = (u32, SequenceInfo)>,
    ) -> Self {
        let written_edges: BTreeMap<EdgeKey, Edge> = edges.into_iter().collect();
        let written_sequences =
            sequences.into_iter().filter(|(_, info)| info.valid_until_ns != 0).collect();
        let written_nodes: BTreeSet<u32> = written_edges.values().map(|e| e.child).collect();
        let next_node = written_nodes.last().map_or(ROOT + 1, |&n| n.wrapping_add(1));
        let mut table =
            Self { written_edges, written_sequences, written_nodes, next_node, ..Self::new() };
        table.skip_reserved();
        table
    }

    /// Wants sequence `index` installed as `info` with knocks `steps`;
    /// replaces whatever the index held.
    pub fn install(
        &mut self,
        index: u32,
        info: SequenceInfo,
        steps: &[ProtoPort],
    ) -> Result<(), InstallError> {
        if let Some(old) = self.sequences.get(&index) {
            if old.info == info && old.steps == steps {
                return Ok(());
            }
            self.retire(index);
        }
        if steps.is_empty() || steps.len() > MAX_KNOCK_STEPS as usize {
            return Err(InstallError::BadLength);
        }
        // Check before changing anything: the last edge may have no room.
        let mut node = ROOT;
        for (i, step) in steps.iter().enumerate() {
            let Some(edge) = self.edges.get(&EdgeKey::new(node, step.proto, step.port)) else {
                break;
            };
            if i + 1 == steps.len() && edge.finishes.iter().all(|&f| f != 0) {
                return Err(InstallError::TooManyIdentical);
            }
            node = edge.child;
        }

        let mut path = Vec::with_capacity(steps.len());
        let mut node = ROOT;
        for step in steps {
            let key = EdgeKey::new(node, step.proto, step.port);
            let child = match self.edges.get(&key) {
                Some(edge) => edge.child,
                None => {
                    // Keep the id the maps already have for this edge.
                    let child = self
                        .written_edges
                        .get(&key)
                        .map(|e| e.child)
                        .filter(|c| !self.wanted_nodes.contains(c))
                        .unwrap_or_else(|| self.allocate());
                    self.wanted_nodes.insert(child);
                    self.edges.insert(key, Edge { child, ..Edge::default() });
                    child
                }
            };
            self.through.entry(key).or_default().insert(index);
            path.push(key);
            node = child;
        }
        let last = *path.last().expect("at least one step");
        let finishes = &mut self.edges.get_mut(&last).expect("just inserted").finishes;
        let place = finishes.iter().position(|&f| f == 0).expect("room checked above");
        finishes[place] = index + 1;
        finishes[..=place].sort_unstable_by_key(|&f| if f == 0 { u32::MAX } else { f });
        for key in &path {
            self.refresh_via(key);
        }
        self.sequences.insert(index, Installed { info, steps: steps.to_vec(), path });
        Ok(())
    }

    /// No longer wants sequence `index`.
    pub fn retire(&mut self, index: u32) {
        let Some(old) = self.sequences.remove(&index) else {
            return;
        };
        for key in &old.path {
            let through = self.through.get_mut(key).expect("path edges are followed");
            through.remove(&index);
            if through.is_empty() {
                self.through.remove(key);
                if let Some(edge) = self.edges.remove(key) {
                    self.wanted_nodes.remove(&edge.child);
                }
            } else {
                let edge = self.edges.get_mut(key).expect("path edges exist");
                if let Some(place) = edge.finishes.iter().position(|&f| f == index + 1) {
                    edge.finishes[place] = 0;
                    edge.finishes.sort_unstable_by_key(|&f| if f == 0 { u32::MAX } else { f });
                }
                self.refresh_via(key);
            }
        }
    }

    /// The sequences wanted, by index.
    pub fn sequences(&self) -> impl Iterator<Item = (u32, &SequenceInfo, &[ProtoPort])> {
        self.sequences.iter().map(|(&index, s)| (index, &s.info, s.steps.as_slice()))
    }

    pub fn sequence(&self, index: u32) -> Option<(&SequenceInfo, &[ProtoPort])> {
        self.sequences.get(&index).map(|s| (&s.info, s.steps.as_slice()))
    }

    /// The edges wanted.
    pub fn edges(&self) -> &BTreeMap<EdgeKey, Edge> {
        &self.edges
    }

    /// What the maps hold, as far as this table wrote or adopted it.
    pub fn written(&self) -> (&BTreeMap<EdgeKey, Edge>, &BTreeMap<u32, SequenceInfo>) {
        (&self.written_edges, &self.written_sequences)
    }

    /// True when the maps hold exactly what is wanted.
    pub fn in_sync(&self) -> bool {
        self.written_edges == self.edges
            && self.written_sequences.len() == self.sequences.len()
            && self.sequences.iter().all(|(i, s)| self.written_sequences.get(i) == Some(&s.info))
    }

    /// Writes what differs, in an order safe for knocks in flight: changed
    /// sequences are retired first (a completion on a stale path then fails),
    /// then the edges change (unwanted ones removed first), then the new
    /// sequences are published. Stops at
    /// the first failed write; what was written is remembered, so the next
    /// call finishes the job.
    pub fn sync<S: KnockSink>(&mut self, sink: &mut S) -> Result<(), S::Error> {
        let wanted = |table: &Self, index: u32| table.sequences.get(&index).map(|s| s.info);
        let retired: Vec<u32> = self
            .written_sequences
            .iter()
            .filter(|(index, info)| wanted(self, **index).as_ref() != Some(info))
            .map(|(index, _)| *index)
            .collect();
        for index in retired {
            sink.set_sequence(index, &SequenceInfo::default())?;
            self.written_sequences.remove(&index);
        }
        // Edges no sequence wants any more go before new ones come, so the
        // map never holds both: a rotation of every client at once fits in
        // the room of the sequences installed. Only retired sequences used
        // them, so no knock that can still complete loses its path.
        let gone: Vec<EdgeKey> =
            self.written_edges.keys().filter(|k| !self.edges.contains_key(k)).copied().collect();
        for key in gone {
            sink.remove_edge(&key)?;
            self.written_edges.remove(&key);
        }
        let changed: Vec<(EdgeKey, Edge)> = self
            .edges
            .iter()
            .filter(|(key, edge)| self.written_edges.get(key) != Some(edge))
            .map(|(key, edge)| (*key, *edge))
            .collect();
        for (key, edge) in changed {
            sink.set_edge(&key, &edge)?;
            self.written_edges.insert(key, edge);
        }
        let published: Vec<(u32, SequenceInfo)> = self
            .sequences
            .iter()
            .filter(|(index, s)| self.written_sequences.get(index) != Some(&s.info))
            .map(|(index, s)| (*index, s.info))
            .collect();
        for (index, info) in published {
            sink.set_sequence(index, &info)?;
            self.written_sequences.insert(index, info);
        }
        self.written_nodes = self.written_edges.values().map(|e| e.child).collect();
        Ok(())
    }

    fn refresh_via(&mut self, key: &EdgeKey) {
        let via = self.through.get(key).and_then(|t| t.first()).map_or(0, |&i| i + 1);
        if let Some(edge) = self.edges.get_mut(key) {
            edge.via = via;
        }
    }

    fn allocate(&mut self) -> u32 {
        self.skip_reserved();
        while self.wanted_nodes.contains(&self.next_node)
            || self.written_nodes.contains(&self.next_node)
        {
            self.next_node = self.next_node.wrapping_add(1);
            self.skip_reserved();
        }
        let node = self.next_node;
        self.next_node = self.next_node.wrapping_add(1);
        node
    }

    /// The root and the done marker are never a node's id.
    fn skip_reserved(&mut self) {
        while self.next_node == ROOT || self.next_node == KnockState::DONE {
            self.next_node = self.next_node.wrapping_add(1);
        }
    }
}

#[cfg(test)]
mod tests;
