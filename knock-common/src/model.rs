//! A reference model of the kernel's maps on plain collections: the same
//! decision and knock code runs over it on the host, in unit tests and in
//! property tests.

extern crate std;

use std::{cell::RefCell, collections::HashMap, vec::Vec};

use crate::{
    knock::{KnockTables, on_attempt, set_bit},
    maps::{
        AllowEntry, Config, Event, FlowEntry, FlowKey, KnockState, PROTO_TCP, SequenceInfo,
        SourceKey, StepEntry, StepKey, UsedKey,
    },
    verdict::{Tables, Transport},
};

pub const SEC: u64 = 1_000_000_000;

#[derive(Default)]
pub struct Model {
    pub ports: HashMap<u16, u32>,
    pub allow: RefCell<HashMap<SourceKey, AllowEntry>>,
    pub steps: HashMap<StepKey, StepEntry>,
    pub sequences: HashMap<u32, SequenceInfo>,
    pub states: RefCell<HashMap<SourceKey, KnockState>>,
    pub used: RefCell<HashMap<UsedKey, u64>>,
    pub active: RefCell<u64>,
    pub events: RefCell<Vec<Event>>,
    pub flows: RefCell<HashMap<FlowKey, FlowEntry>>,
    /// Always-allowed networks: (network, prefix length in bits).
    pub nets: Vec<(SourceKey, u8)>,
    pub config: Config,
}

impl Model {
    pub fn new() -> Self {
        Self {
            config: Config {
                open_window_ns: 30 * SEC,
                knock_timeout_ns: 10 * SEC,
                idle_timeout_ns: 900 * SEC,
                close_grace_ns: 10 * SEC,
            },
            ..Self::default()
        }
    }

    /// Installs `ports` (TCP) as sequence `index` of `client` for `slot`,
    /// valid from 0 to 100 s.
    pub fn install(&mut self, index: u32, client: u32, slot: u64, ports: &[u16]) {
        for (step, &port) in ports.iter().enumerate() {
            let entry =
                self.steps.entry(StepKey { port, proto: PROTO_TCP, step: step as u8 }).or_default();
            set_bit(&mut entry.continues, index);
            if step == ports.len() - 1 {
                set_bit(&mut entry.finishes, index);
            }
            *self.ports.entry(port).or_default() |= Transport::Tcp.knock_flag();
        }
        self.sequences.insert(
            index,
            SequenceInfo {
                valid_from_ns: 0,
                valid_until_ns: 100 * SEC,
                slot,
                client,
                length: ports.len() as u32,
            },
        );
    }

    pub fn is_knock_port(&self, port: u16) -> bool {
        self.port_flags(port) & Transport::Tcp.knock_flag() != 0
    }

    /// A TCP SYN from `src` to `port` at `now_s` seconds, through the knock logic only.
    pub fn syn(&self, src: SourceKey, port: u16, now_s: u64) {
        on_attempt(self, &src, Transport::Tcp, port, self.is_knock_port(port), now_s * SEC);
    }

    pub fn knock(&self, src: SourceKey, ports: &[u16], now_s: u64) {
        for &port in ports {
            self.syn(src, port, now_s);
        }
    }

    pub fn allowed_entry(&self, src: SourceKey) -> Option<AllowEntry> {
        self.allow.borrow().get(&src).copied()
    }

    pub fn last_event(&self) -> u32 {
        self.events.borrow().last().expect("an event").kind
    }
}

impl Tables for Model {
    fn port_flags(&self, port: u16) -> u32 {
        self.ports.get(&port).copied().unwrap_or(0)
    }
    fn allowed(&self, src: &SourceKey) -> Option<AllowEntry> {
        self.allow.borrow().get(src).copied()
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
    fn flow(&self, key: &FlowKey) -> Option<FlowEntry> {
        self.flows.borrow().get(key).copied()
    }
    fn set_flow(&self, key: &FlowKey, entry: &FlowEntry) {
        self.flows.borrow_mut().insert(*key, *entry);
    }
}

impl KnockTables for Model {
    fn knock_step(&self, key: &StepKey) -> Option<&StepEntry> {
        self.steps.get(key)
    }
    fn sequence(&self, index: u32) -> Option<&SequenceInfo> {
        self.sequences.get(&index)
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
    fn claim(&self, key: &UsedKey, now_ns: u64) -> bool {
        self.used.borrow_mut().insert(*key, now_ns).is_none()
    }
    fn admit(&self, src: &SourceKey, entry: &AllowEntry) -> bool {
        let mut allow = self.allow.borrow_mut();
        // Never shorten a longer window (e.g. a manual allow).
        if allow.get(src).is_none_or(|old| old.deadline_ns < entry.deadline_ns) {
            allow.insert(*src, *entry);
        }
        true
    }
    fn config(&self) -> Config {
        self.config
    }
    fn knock_active_until(&self) -> u64 {
        *self.active.borrow()
    }
    fn set_knock_active_until(&self, until_ns: u64) {
        *self.active.borrow_mut() = until_ns;
    }
    fn emit(&self, event: &Event) {
        self.events.borrow_mut().push(*event);
    }
}
