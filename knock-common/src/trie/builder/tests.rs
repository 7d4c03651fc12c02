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
            table.install(index, info(client.into(), slot.into()), &steps(client, slot)).unwrap();
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
