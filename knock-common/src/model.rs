//! A reference model of the kernel's maps on plain collections: the same
//! decision and knock code runs over it on the host, in unit tests and in
//! the differential test against the real program.

extern crate std;

use std::{cell::RefCell, collections::HashMap, vec::Vec};

use crate::{
    allow::AllowEntry,
    decide::{Clocks, Decision, Maps, Parsed, Transport, decide},
    event::{Event, EventKind},
    flow::{FlowEntry, FlowKey, Segment},
    knock::KnockMaps,
    maps::{Runtime, Settings},
    proto::{Proto, ProtoPort, tcp_flags},
    source::{PrefixKey, SourceKey},
    spa::{NonceKey, Scratch, SpaKey, SpaMaps},
    trie::{Edge, EdgeKey, KnockSink, KnockState, KnockTable, SequenceInfo, UsedKey},
};

pub const SEC: u64 = 1_000_000_000;

#[derive(Default)]
pub struct Model {
    pub ports: HashMap<u16, u32>,
    pub allow: RefCell<HashMap<SourceKey, AllowEntry>>,
    pub edges: HashMap<EdgeKey, Edge>,
    pub sequences: HashMap<u32, SequenceInfo>,
    pub states: RefCell<HashMap<SourceKey, KnockState>>,
    pub used: RefCell<HashMap<UsedKey, u64>>,
    pub misses: RefCell<HashMap<PrefixKey, u64>>,
    pub spa_keys: HashMap<u32, SpaKey>,
    pub nonces: RefCell<HashMap<NonceKey, u64>>,
    pub scratch: RefCell<Option<Scratch>>,
    pub runtime: RefCell<[u64; Runtime::COUNT as usize]>,
    pub events: RefCell<Vec<Event>>,
    pub flows: RefCell<HashMap<FlowKey, FlowEntry>>,
    /// Always-allowed networks: (network, prefix length in bits).
    pub nets: Vec<(SourceKey, u8)>,
    pub settings: Settings,
    /// The builder [`Model::install`] goes through, as the daemon's does.
    pub table: KnockTable,
}

impl Model {
    /// The daemon's defaults, without failed-knock limits (tests of the
    /// limits set their own).
    pub fn new() -> Self {
        Self {
            settings: Settings {
                open_window_ns: 30 * SEC,
                knock_timeout_ns: 10 * SEC,
                idle_timeout_ns: 900 * SEC,
                close_grace_ns: 10 * SEC,
                ..Settings::default()
            },
            table: KnockTable::new(),
            ..Self::default()
        }
    }

    /// Puts `lo..=hi` in the knock space of `proto`.
    pub fn knock_space(&mut self, proto: Proto, lo: u16, hi: u16) {
        for port in lo..=hi {
            *self.ports.entry(port).or_default() |= proto.knock_space_flag();
        }
    }

    /// Installs `steps` as sequence `index` of `client` for `slot`, valid
    /// from 0 to 100 s, through the builder; its ports join the knock space.
    pub fn install_steps(&mut self, index: u32, client: u32, slot: u64, steps: &[ProtoPort]) {
        let info = SequenceInfo {
            valid_from_ns: 0,
            valid_until_ns: 100 * SEC,
            slot,
            client,
            length: steps.len() as u32,
        };
        self.table.install(index, info, steps).expect("installable");
        self.sync();
        for step in steps {
            *self.ports.entry(step.port).or_default() |= step.proto.knock_space_flag();
        }
    }

    /// [`Model::install_steps`] for TCP knocks.
    pub fn install(&mut self, index: u32, client: u32, slot: u64, ports: &[u16]) {
        let steps: Vec<ProtoPort> = ports.iter().map(|&p| ProtoPort::new(Proto::Tcp, p)).collect();
        self.install_steps(index, client, slot, &steps);
    }

    /// Writes the builder's changes into the model's maps.
    pub fn sync(&mut self) {
        let mut table = core::mem::take(&mut self.table);
        let synced = table.sync(self);
        self.table = table;
        synced.unwrap_or_else(|never: core::convert::Infallible| match never {});
    }

    /// A TCP SYN from `src` (source port 40000) to `port` at `now_s` seconds.
    pub fn syn(&self, src: SourceKey, port: u16, now_s: u64) -> Decision {
        self.packet(src, Proto::Tcp, 40000, port, tcp_flags::SYN, now_s * SEC)
    }

    /// One packet through the decision, with a plain segment (sequence and
    /// acknowledgement 0, no data).
    pub fn packet(
        &self,
        src: SourceKey,
        proto: Proto,
        sport: u16,
        dport: u16,
        flags: u8,
        now_ns: u64,
    ) -> Decision {
        let tcp = match proto {
            Proto::Tcp => Segment::new(flags, 0, 0, 0),
            Proto::Udp => Segment::default(),
        };
        let pkt = Packet { src, proto, sport, dport, tcp, ..Packet::default() };
        decide(self, Parsed::Transport(pkt), || now_ns)
    }

    /// A UDP datagram from `src` to `server:dport` carrying `payload`.
    pub fn datagram(
        &self,
        src: SourceKey,
        server: SourceKey,
        dport: u16,
        payload: &[u8],
        now_ns: u64,
    ) -> Decision {
        let pkt = Packet {
            src,
            proto: Proto::Udp,
            sport: 40000,
            dport,
            payload: payload.to_vec(),
            destination: Some(server),
            ..Packet::default()
        };
        decide(self, Parsed::Transport(pkt), || now_ns)
    }

    pub fn knock(&self, src: SourceKey, ports: &[u16], now_s: u64) {
        for &port in ports {
            self.syn(src, port, now_s);
        }
    }

    pub fn allowed_entry(&self, src: SourceKey) -> Option<AllowEntry> {
        self.allow.borrow().get(&src).copied()
    }

    pub fn last_event(&self) -> EventKind {
        let kind = self.events.borrow().last().expect("an event").kind;
        EventKind::from_u32(kind).expect("a known kind")
    }

    pub fn saw(&self, kind: EventKind) -> bool {
        self.events.borrow().iter().any(|e| e.kind == kind as u32)
    }
}

/// Readings of both clocks, for a caller that compares the model with the
/// program (which reads two different clocks).
#[derive(Clone, Copy, Debug)]
pub struct At {
    pub boot_ns: u64,
    pub flow_ns: u64,
}

impl Clocks for At {
    fn boot_ns(&self) -> u64 {
        self.boot_ns
    }
    fn flow_ns(&self) -> u64 {
        self.flow_ns
    }
}

/// A packet as the model's callers give it: every field the program reads
/// from a frame, as plain data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src: SourceKey,
    pub proto: Proto,
    pub sport: u16,
    pub dport: u16,
    /// TCP only.
    pub tcp: Segment,
    /// UDP only.
    pub payload: Vec<u8>,
    /// The address the packet was sent to; only SPA reads it.
    pub destination: Option<SourceKey>,
}

impl Default for Packet {
    fn default() -> Self {
        Self {
            src: SourceKey::v4([0; 4]),
            proto: Proto::Tcp,
            sport: 40000,
            dport: 0,
            tcp: Segment::default(),
            payload: Vec::new(),
            destination: None,
        }
    }
}

impl Transport for Packet {
    fn proto(&self) -> Proto {
        self.proto
    }
    fn dport(&self) -> u16 {
        self.dport
    }
    fn source(&self) -> Option<SourceKey> {
        Some(self.src)
    }
    fn sport(&self) -> Option<u16> {
        Some(self.sport)
    }
    fn tcp_flags(&self) -> Option<u8> {
        Some(self.tcp.flags)
    }
    fn segment(&self) -> Option<Segment> {
        Some(self.tcp)
    }
    fn udp_payload_len(&self) -> Option<u16> {
        Some(self.payload.len() as u16)
    }
    fn read_spa(&self, scratch: &mut Scratch) -> bool {
        let Ok(datagram) = self.payload.as_slice().try_into() else {
            return false;
        };
        scratch.datagram = datagram;
        scratch.server = self.destination.expect("the test gives the destination of SPA datagrams");
        true
    }
}

impl SpaMaps for Model {
    fn spa_key(&self, index: u32) -> Option<&SpaKey> {
        self.spa_keys.get(&index)
    }
    fn with_scratch<R>(&self, f: impl FnOnce(&mut Scratch) -> R) -> Option<R> {
        let mut scratch = self.scratch.borrow_mut();
        Some(f(scratch.get_or_insert_with(bytemuck::Zeroable::zeroed)))
    }
    fn insert_nonce(&self, key: &NonceKey, now_ns: u64) -> bool {
        let mut nonces = self.nonces.borrow_mut();
        if nonces.contains_key(key) {
            return false;
        }
        nonces.insert(*key, now_ns);
        true
    }
}

impl KnockSink for Model {
    type Error = core::convert::Infallible;
    fn set_edge(&mut self, key: &EdgeKey, edge: &Edge) -> Result<(), Self::Error> {
        self.edges.insert(*key, *edge);
        Ok(())
    }
    fn remove_edge(&mut self, key: &EdgeKey) -> Result<(), Self::Error> {
        self.edges.remove(key);
        Ok(())
    }
    fn set_sequence(&mut self, index: u32, info: &SequenceInfo) -> Result<(), Self::Error> {
        self.sequences.insert(index, *info);
        Ok(())
    }
}

impl Maps for Model {
    fn port_flags(&self, port: u16) -> u32 {
        self.ports.get(&port).copied().unwrap_or(0)
    }
    fn in_allowed_network(&self, src: &SourceKey) -> bool {
        self.nets.iter().any(|(net, bits)| {
            net.family == src.family
                && (0..usize::from(*bits)).all(|bit| {
                    let mask = 0x80u8 >> (bit % 8);
                    net.addr[bit / 8] & mask == src.addr[bit / 8] & mask
                })
        })
    }
    fn has_allowed_networks(&self) -> bool {
        !self.nets.is_empty()
    }
    /// The model has no filter: the differential test thus proves that the
    /// program's never turns away a packet the full lookups admit.
    fn may_be_admitted(&self, _: &SourceKey) -> bool {
        true
    }
    fn update_flow<R>(&self, key: &FlowKey, f: impl FnOnce(&mut FlowEntry) -> R) -> Option<R> {
        self.flows.borrow_mut().get_mut(key).map(f)
    }
    fn insert_flow(&self, key: &FlowKey, entry: &FlowEntry) {
        self.flows.borrow_mut().insert(*key, *entry);
    }
}

impl KnockMaps for Model {
    fn edge(&self, key: &EdgeKey) -> Option<Edge> {
        self.edges.get(key).copied()
    }
    fn sequence(&self, index: u32) -> Option<SequenceInfo> {
        self.sequences.get(&index).copied()
    }
    fn knock_state(&self, src: &SourceKey) -> Option<KnockState> {
        self.states.borrow().get(src).copied()
    }
    fn set_knock_state(&self, src: &SourceKey, state: &KnockState) {
        self.states.borrow_mut().insert(*src, *state);
    }
    fn clear_knock_state(&self, src: &SourceKey) {
        self.states.borrow_mut().remove(src);
    }
    fn insert_used(&self, key: &UsedKey, now_ns: u64) -> bool {
        let mut used = self.used.borrow_mut();
        if used.contains_key(key) {
            return false;
        }
        used.insert(*key, now_ns);
        true
    }
    fn allowed(&self, src: &SourceKey) -> Option<AllowEntry> {
        self.allow.borrow().get(src).copied()
    }
    fn set_allowed(&self, src: &SourceKey, entry: &AllowEntry) -> bool {
        self.allow.borrow_mut().insert(*src, *entry);
        true
    }
    fn misses(&self, prefix: &PrefixKey) -> Option<u64> {
        self.misses.borrow().get(prefix).copied()
    }
    fn set_misses(&self, prefix: &PrefixKey, tat_ns: u64) {
        self.misses.borrow_mut().insert(*prefix, tat_ns);
    }
    fn runtime(&self, word: Runtime) -> u64 {
        self.runtime.borrow()[word as usize]
    }
    fn set_runtime(&self, word: Runtime, value: u64) {
        self.runtime.borrow_mut()[word as usize] = value;
    }
    fn settings(&self) -> Option<&Settings> {
        Some(&self.settings)
    }
    fn emit(&self, event: &Event) {
        self.events.borrow_mut().push(*event);
    }
}
