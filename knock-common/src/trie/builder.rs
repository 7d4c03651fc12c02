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
mod tests {
    use super::*;
    use crate::proto::Proto;

    /// A sink that records what it was told, as a map would hold it.
    #[derive(Default)]
    struct Maps {
        edges: BTreeMap<EdgeKey, Edge>,
        sequences: BTreeMap<u32, SequenceInfo>,
        writes: usize,
        /// The most edges held at once.
        peak: usize,
    }

    impl KnockSink for Maps {
        type Error = core::convert::Infallible;
        fn set_edge(&mut self, key: &EdgeKey, edge: &Edge) -> Result<(), Self::Error> {
            self.writes += 1;
            self.edges.insert(*key, *edge);
            self.peak = self.peak.max(self.edges.len());
            Ok(())
        }
        fn remove_edge(&mut self, key: &EdgeKey) -> Result<(), Self::Error> {
            self.writes += 1;
            self.edges.remove(key);
            Ok(())
        }
        fn set_sequence(&mut self, index: u32, info: &SequenceInfo) -> Result<(), Self::Error> {
            self.writes += 1;
            self.sequences.insert(index, *info);
            Ok(())
        }
    }

    fn tcp(ports: &[u16]) -> Vec<ProtoPort> {
        ports.iter().map(|&p| ProtoPort::new(Proto::Tcp, p)).collect()
    }

    fn info(client: u32, slot: u64) -> SequenceInfo {
        SequenceInfo { valid_from_ns: 0, valid_until_ns: 100, slot, client, length: 0 }
    }

    #[test]
    fn a_rotation_of_every_client_fits_in_the_room_of_the_installed_sequences() {
        // 64 clients, 4 slots of 4 knocks each, no prefix shared: the map
        // holds 16 edges a client. Then every client rotates at once.
        let (clients, slots) = (64u16, 4u16);
        let steps = |client: u16, slot: u16| tcp(&[1000 + client * 8 + slot, 20000, 30000, 40000]);
        let mut table = KnockTable::new();
        let mut maps = Maps::default();
        for client in 0..clients {
            for slot in 0..slots {
                let index = u32::from(client * 4 + slot);
                table
                    .install(index, info(client.into(), slot.into()), &steps(client, slot))
                    .unwrap();
            }
        }
        table.sync(&mut maps).unwrap();
        let installed = maps.edges.len();
        assert_eq!(installed, usize::from(clients * slots * 4));
        for client in 0..clients {
            // Slot 4 replaces slot 0 at its index, as the daemon rotates.
            let index = u32::from(client * 4);
            table.install(index, info(client.into(), 4), &steps(client, 4)).unwrap();
        }
        maps.peak = 0;
        table.sync(&mut maps).unwrap();
        assert_eq!(maps.edges.len(), installed);
        assert_eq!(maps.peak, installed, "the map held old and new edges at once");
        assert!(walk(&maps, &steps(5, 4)).is_some() && walk(&maps, &steps(5, 0)).is_none());
    }

    /// Follows `steps` through the written edges; the finishers at the end.
    fn walk(maps: &Maps, steps: &[ProtoPort]) -> Option<[u32; MAX_FINISHERS]> {
        let mut node = ROOT;
        let mut finishes = None;
        for step in steps {
            let edge = maps.edges.get(&EdgeKey::new(node, step.proto, step.port))?;
            node = edge.child;
            finishes = Some(edge.finishes);
        }
        finishes
    }

    #[test]
    fn shared_prefixes_share_edges_and_both_sequences_finish() {
        let mut table = KnockTable::new();
        let mut maps = Maps::default();
        table.install(0, info(1, 5), &tcp(&[1000, 2000, 3000])).unwrap();
        table.install(4, info(2, 5), &tcp(&[1000, 2000, 4000])).unwrap();
        table.sync(&mut maps).unwrap();
        assert_eq!(maps.edges.len(), 4, "{:?}", maps.edges);
        assert_eq!(walk(&maps, &tcp(&[1000, 2000, 3000])).unwrap()[0], 1);
        assert_eq!(walk(&maps, &tcp(&[1000, 2000, 4000])).unwrap()[0], 5);
        assert!(walk(&maps, &tcp(&[2000])).is_none());
        assert!(table.in_sync());
    }

    #[test]
    fn identical_sequences_are_listed_up_to_the_limit() {
        let mut table = KnockTable::new();
        let steps = tcp(&[1000, 2000]);
        for index in 0..MAX_FINISHERS as u32 {
            table.install(index * 4, info(index + 1, 5), &steps).unwrap();
        }
        assert_eq!(table.install(99, info(99, 5), &steps), Err(InstallError::TooManyIdentical));
        let mut maps = Maps::default();
        table.sync(&mut maps).unwrap();
        assert_eq!(walk(&maps, &steps), Some([1, 5, 9, 13]));
        table.retire(4);
        table.sync(&mut maps).unwrap();
        assert_eq!(walk(&maps, &steps), Some([1, 9, 13, 0]));
    }

    #[test]
    fn retiring_removes_only_what_no_other_sequence_uses() {
        let mut table = KnockTable::new();
        let mut maps = Maps::default();
        table.install(0, info(1, 5), &tcp(&[1000, 2000, 3000])).unwrap();
        table.install(4, info(2, 5), &tcp(&[1000, 2000, 4000])).unwrap();
        table.sync(&mut maps).unwrap();
        table.retire(0);
        table.sync(&mut maps).unwrap();
        assert_eq!(maps.edges.len(), 3);
        assert!(walk(&maps, &tcp(&[1000, 2000, 3000])).is_none());
        assert_eq!(walk(&maps, &tcp(&[1000, 2000, 4000])).unwrap()[0], 5);
        assert_eq!(maps.sequences[&0], SequenceInfo::default());
        table.retire(4);
        table.sync(&mut maps).unwrap();
        assert!(maps.edges.is_empty());
    }

    #[test]
    fn a_sync_with_nothing_changed_writes_nothing() {
        let mut table = KnockTable::new();
        let mut maps = Maps::default();
        table.install(0, info(1, 5), &tcp(&[1000, 2000])).unwrap();
        table.sync(&mut maps).unwrap();
        let writes = maps.writes;
        table.install(0, info(1, 5), &tcp(&[1000, 2000])).unwrap();
        table.sync(&mut maps).unwrap();
        assert_eq!(maps.writes, writes);
    }

    #[test]
    fn a_take_over_keeps_node_ids_and_repairs_half_writes() {
        let mut first = KnockTable::new();
        let mut maps = Maps::default();
        first.install(0, info(1, 5), &tcp(&[1000, 2000])).unwrap();
        first.install(4, info(2, 5), &tcp(&[3000, 4000])).unwrap();
        first.sync(&mut maps).unwrap();
        // A killed daemon left an orphan edge and a retired index behind.
        maps.edges.insert(EdgeKey::new(ROOT, Proto::Udp, 9), Edge { child: 77, ..Edge::default() });
        let before = maps.edges.clone();

        let mut second = KnockTable::adopt(maps.edges.clone(), maps.sequences.clone());
        second.install(0, info(1, 5), &tcp(&[1000, 2000])).unwrap();
        second.install(4, info(2, 5), &tcp(&[3000, 4000])).unwrap();
        maps.writes = 0;
        second.sync(&mut maps).unwrap();
        assert_eq!(maps.writes, 1, "only the orphan goes");
        for (key, edge) in &maps.edges {
            assert_eq!(before[key], *edge, "node ids kept");
        }
        // New nodes never reuse an adopted id.
        second.install(8, info(3, 5), &tcp(&[5000])).unwrap();
        second.sync(&mut maps).unwrap();
        let child = maps.edges[&EdgeKey::new(ROOT, Proto::Tcp, 5000)].child;
        assert!(child > 77, "{child}");
    }

    #[test]
    fn freed_node_ids_are_not_handed_out_again_soon() {
        let mut table = KnockTable::new();
        let mut maps = Maps::default();
        let mut seen = BTreeSet::new();
        for round in 0..50u16 {
            table.install(0, info(1, u64::from(round)), &tcp(&[1000 + round, 2000])).unwrap();
            table.sync(&mut maps).unwrap();
            for edge in maps.edges.values() {
                seen.insert(edge.child);
            }
        }
        assert_eq!(seen.len(), 100, "every path got fresh ids");
    }

    #[test]
    fn lengths_are_checked() {
        let mut table = KnockTable::new();
        assert_eq!(table.install(0, info(1, 5), &[]), Err(InstallError::BadLength));
        let long: Vec<u16> = (1..=MAX_KNOCK_STEPS as u16 + 1).collect();
        assert_eq!(table.install(0, info(1, 5), &tcp(&long)), Err(InstallError::BadLength));
        assert_eq!(table.sequences().count(), 0);
    }
}
