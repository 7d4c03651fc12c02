//! What happens to a parsed packet: the enforcement decision, written once as
//! plain Rust over plain data so the XDP program and host tests share it.

use crate::{
    knock::{self, KnockTables},
    maps::{AllowEntry, Config, Counter, FlowEntry, FlowKey, SourceKey, port_flags},
};

/// XDP verdicts (from `enum xdp_action` in the kernel's uapi).
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// Transport protocols whose ports can be protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    /// The [`port_flags`] bit that protects this protocol.
    pub const fn protected_flag(self) -> u32 {
        match self {
            Transport::Tcp => port_flags::PROTECTED_TCP,
            Transport::Udp => port_flags::PROTECTED_UDP,
        }
    }

    /// The [`port_flags`] bit that marks a knock port of this protocol.
    pub const fn knock_flag(self) -> u32 {
        match self {
            Transport::Tcp => port_flags::KNOCK_TCP,
            Transport::Udp => port_flags::KNOCK_UDP,
        }
    }
}

/// TCP flag bits (RFC 9293).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// A new connection attempt: a bare SYN, or any UDP datagram. Only these
/// knock; SYN+ACK, SYN+RST or SYN+FIN are not how a connection starts.
#[inline(always)]
pub const fn is_attempt(proto: Transport, flags: u8) -> bool {
    match proto {
        Transport::Udp => true,
        Transport::Tcp => {
            flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST | tcp_flags::FIN)
                == tcp_flags::SYN
        }
    }
}

/// What the parser made of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Cannot carry a TCP or UDP header to us (ARP, ICMP, a non-first
    /// fragment, ...): passes untouched.
    Unrelated,
    /// Could carry TCP or UDP, but its transport header cannot be located or is
    /// truncated. We cannot tell whether it is for a protected port, so it drops.
    Malformed,
    /// A TCP or UDP packet whose destination port we know.
    Transport {
        src: SourceKey,
        proto: Transport,
        sport: u16,
        dport: u16,
        /// The TCP flags byte (0 for UDP).
        flags: u8,
    },
}

/// The maps the decision reads, behind a trait so the same decision runs on
/// BPF maps in the kernel and on plain collections in host tests.
pub trait Tables: KnockTables {
    /// The [`port_flags`] of `port`.
    fn port_flags(&self, port: u16) -> u32;
    /// The allow entry of `src`, if any.
    fn allowed(&self, src: &SourceKey) -> Option<AllowEntry>;
    /// True when `src` lies in an always-allowed network.
    fn in_allowed_network(&self, src: &SourceKey) -> bool;
    /// The flow's entry, if it is followed.
    fn flow(&self, key: &FlowKey) -> Option<FlowEntry>;
    /// Creates or replaces a flow.
    fn set_flow(&self, key: &FlowKey, entry: &FlowEntry);
}

/// A verdict and the counter that records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub action: u32,
    pub counter: Counter,
}

impl Decision {
    const fn new(action: u32, counter: Counter) -> Self {
        Self { action, counter }
    }
}

/// Reads the clock at most once per packet, and only when needed.
struct Clock<F: Fn() -> u64> {
    read: F,
    now: Option<u64>,
}

impl<F: Fn() -> u64> Clock<F> {
    #[inline(always)]
    fn now(&mut self) -> u64 {
        *self.now.get_or_insert_with(&self.read)
    }
}

/// Decides the fate of a parsed packet. Unrelated traffic costs one array
/// load (the port's flags); the clock and the hash maps are only touched for
/// connection attempts while knocks are in progress, knocks, and packets to
/// protected ports.
#[inline(always)]
pub fn decide<T: Tables>(tables: &T, parsed: Parsed, clock: impl Fn() -> u64) -> Decision {
    let (src, proto, sport, dport, flags) = match parsed {
        Parsed::Unrelated => return Decision::new(XDP_PASS, Counter::Passed),
        Parsed::Malformed => return Decision::new(XDP_DROP, Counter::DroppedMalformed),
        Parsed::Transport { src, proto, sport, dport, flags } => (src, proto, sport, dport, flags),
    };
    let mut clock = Clock { read: clock, now: None };
    let port = tables.port_flags(dport);

    if is_attempt(proto, flags) {
        let knock_port = port & proto.knock_flag() != 0;
        // Every attempt from a source with a knock in progress must reach the
        // state machine (any wrong port resets it). While no knock can be in
        // progress anywhere, skip the state lookup altogether.
        let active_until = tables.knock_active_until();
        if knock_port || (active_until != 0 && clock.now() < active_until) {
            knock::on_attempt(tables, &src, proto, dport, knock_port, clock.now());
        }
        if knock_port {
            // Knock ports look like every other filtered port.
            return Decision::new(XDP_DROP, Counter::DroppedKnock);
        }
    }

    if port & proto.protected_flag() == 0 {
        return Decision::new(XDP_PASS, Counter::Passed);
    }
    protected(tables, src, proto, sport, dport, flags, &mut clock)
}

/// A packet to a protected port: an open flow, an allowed source or an
/// always-allowed network lets it through; nothing else does.
#[inline(always)]
fn protected<T: Tables, F: Fn() -> u64>(
    tables: &T,
    src: SourceKey,
    proto: Transport,
    sport: u16,
    dport: u16,
    flags: u8,
    clock: &mut Clock<F>,
) -> Decision {
    let key =
        FlowKey { src, src_port: sport, dst_port: dport, proto: proto.number(), _pad: [0; 3] };
    // The client ends the connection: the flow passes only for the closing
    // handshake, then can never be reused as a hole.
    let closing = matches!(proto, Transport::Tcp) && flags & (tcp_flags::FIN | tcp_flags::RST) != 0;
    let close_at =
        |entry: &FlowEntry, now: u64, config: &Config| match (entry.closing_until_ns, closing) {
            (0, true) => now.saturating_add(config.close_grace_ns),
            (until, _) => until,
        };

    // Most packets to a protected port belong to a flow admitted earlier:
    // it keeps passing after the open window, for as long as it is active.
    // The clock and the config are read only once an entry is found, so a
    // stranger's packet costs the lookups alone.
    if let Some(entry) = tables.flow(&key) {
        let (now, config) = (clock.now(), tables.config());
        let idle = now.saturating_sub(entry.last_seen_ns) >= config.idle_timeout_ns;
        let closed = entry.closing_until_ns != 0 && now >= entry.closing_until_ns;
        if !idle && !closed {
            tables.set_flow(
                &key,
                &FlowEntry { last_seen_ns: now, closing_until_ns: close_at(&entry, now, &config) },
            );
            return Decision::new(XDP_PASS, Counter::PassedFlow);
        }
    }

    let counter = match tables.allowed(&src) {
        // The kernel enforces the deadline itself: userspace may sweep late.
        Some(entry) if clock.now() < entry.deadline_ns => Counter::PassedAllowed,
        _ if tables.in_allowed_network(&src) => Counter::PassedNetwork,
        _ => return Decision::new(XDP_DROP, Counter::DroppedProtected),
    };
    let (now, config) = (clock.now(), tables.config());
    let fresh = FlowEntry { last_seen_ns: now, closing_until_ns: 0 };
    tables.set_flow(&key, &FlowEntry { closing_until_ns: close_at(&fresh, now, &config), ..fresh });
    Decision::new(XDP_PASS, counter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        maps::{allow_origin, event_kind},
        model::{Model, SEC},
    };

    const CLIENT: SourceKey = SourceKey::v4([10, 0, 0, 2]);

    fn tcp(dport: u16) -> Parsed {
        packet(Transport::Tcp, dport, tcp_flags::SYN)
    }

    fn packet(proto: Transport, dport: u16, flags: u8) -> Parsed {
        Parsed::Transport { src: CLIENT, proto, sport: 40000, dport, flags }
    }

    fn model() -> Model {
        let mut m = Model::new();
        m.ports.insert(22, port_flags::PROTECTED_TCP);
        m
    }

    fn allow_until(m: &Model, deadline_ns: u64) {
        m.allow
            .borrow_mut()
            .insert(CLIENT, AllowEntry { deadline_ns, origin: allow_origin::MANUAL, client: 0 });
    }

    #[test]
    fn unrelated_ports_pass_without_reading_the_clock() {
        for flags in [tcp_flags::SYN, tcp_flags::ACK] {
            let d = decide(&model(), packet(Transport::Tcp, 80, flags), || panic!("clock read"));
            assert_eq!(d, Decision::new(XDP_PASS, Counter::Passed));
        }
        let d = decide(&model(), packet(Transport::Udp, 53, 0), || panic!("clock read"));
        assert_eq!(d, Decision::new(XDP_PASS, Counter::Passed));
    }

    #[test]
    fn a_stranger_is_dropped_without_reading_the_clock() {
        let d = decide(&model(), tcp(22), || panic!("clock read"));
        assert_eq!(d, Decision::new(XDP_DROP, Counter::DroppedProtected));
        let d =
            decide(&model(), packet(Transport::Tcp, 22, tcp_flags::ACK), || panic!("clock read"));
        assert_eq!(d, Decision::new(XDP_DROP, Counter::DroppedProtected));
    }

    #[test]
    fn protection_is_per_protocol() {
        assert_eq!(decide(&model(), packet(Transport::Udp, 22, 0), || 0).action, XDP_PASS);
        assert_eq!(decide(&model(), tcp(22), || 0).action, XDP_DROP);
    }

    #[test]
    fn stranger_is_dropped_and_allowed_source_passes_until_its_deadline() {
        let m = model();
        assert_eq!(decide(&m, tcp(22), || 5), Decision::new(XDP_DROP, Counter::DroppedProtected));
        allow_until(&m, 10);
        assert_eq!(decide(&m, tcp(22), || 5), Decision::new(XDP_PASS, Counter::PassedAllowed));
        // A new connection once the deadline has passed.
        assert_eq!(
            decide(&m, syn_from_port(40001, 22), || 10),
            Decision::new(XDP_DROP, Counter::DroppedProtected)
        );
    }

    #[test]
    fn an_ipv4_entry_does_not_admit_the_mapped_ipv6_source() {
        let m = model();
        allow_until(&m, u64::MAX);
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&[10, 0, 0, 2]);
        let pkt = Parsed::Transport {
            src: SourceKey::v6(mapped),
            proto: Transport::Tcp,
            sport: 40000,
            dport: 22,
            flags: tcp_flags::SYN,
        };
        assert_eq!(decide(&m, pkt, || 0).action, XDP_DROP);
    }

    #[test]
    fn malformed_drops_and_unrelated_passes() {
        assert_eq!(decide(&model(), Parsed::Malformed, || 0).counter, Counter::DroppedMalformed);
        assert_eq!(decide(&model(), Parsed::Unrelated, || 0).action, XDP_PASS);
    }

    #[test]
    fn knocks_drop_and_open_the_door() {
        let mut m = model();
        m.install(0, 7, 1, &[1000, 2000]);
        for port in [1000, 2000] {
            assert_eq!(
                decide(&m, tcp(port), || SEC),
                Decision::new(XDP_DROP, Counter::DroppedKnock)
            );
        }
        assert_eq!(m.last_event(), event_kind::OPENED);
        assert_eq!(decide(&m, tcp(22), || 2 * SEC).counter, Counter::PassedAllowed);
        // Past the open window new connections are dropped again.
        assert_eq!(
            decide(&m, syn_from_port(40001, 22), || 32 * SEC).counter,
            Counter::DroppedProtected
        );
    }

    #[test]
    fn only_bare_syns_and_datagrams_knock() {
        let mut m = model();
        m.install(0, 7, 1, &[1000]);
        for flags in [
            tcp_flags::SYN | tcp_flags::ACK,
            tcp_flags::SYN | tcp_flags::RST,
            tcp_flags::SYN | tcp_flags::FIN,
            tcp_flags::ACK,
        ] {
            // Not a knock: passes like any packet to an unprotected port.
            let d = decide(&m, packet(Transport::Tcp, 1000, flags), || SEC);
            assert_eq!(d, Decision::new(XDP_PASS, Counter::Passed), "flags {flags:#x}");
        }
        assert!(m.allow.borrow().is_empty());
    }

    #[test]
    fn an_attempt_elsewhere_during_a_knock_resets_it() {
        let mut m = model();
        m.install(0, 7, 1, &[1000, 2000]);
        decide(&m, tcp(1000), || SEC);
        decide(&m, packet(Transport::Udp, 53, 0), || SEC);
        decide(&m, tcp(2000), || SEC);
        assert!(m.allow.borrow().is_empty());
        // An ACK of an unrelated connection does not reset.
        decide(&m, tcp(1000), || SEC);
        decide(&m, packet(Transport::Tcp, 443, tcp_flags::ACK), || SEC);
        decide(&m, tcp(2000), || SEC);
        assert!(!m.allow.borrow().is_empty());
    }

    #[test]
    fn source_key_round_trips_through_ip() {
        for ip in ["192.0.2.7", "2001:db8::1", "::ffff:10.0.0.2"] {
            let ip: core::net::IpAddr = ip.parse().unwrap();
            assert_eq!(SourceKey::from(ip).ip(), Some(ip));
        }
    }

    fn syn_from_port(sport: u16, dport: u16) -> Parsed {
        Parsed::Transport {
            src: CLIENT,
            proto: Transport::Tcp,
            sport,
            dport,
            flags: tcp_flags::SYN,
        }
    }

    fn ack(dport: u16) -> Parsed {
        packet(Transport::Tcp, dport, tcp_flags::ACK)
    }

    #[test]
    fn a_flow_outlives_the_window_while_it_is_active() {
        let m = model();
        allow_until(&m, 10 * SEC);
        assert_eq!(decide(&m, tcp(22), || SEC).counter, Counter::PassedAllowed);
        // Past the window, the same connection goes on while it is active...
        for t in [20, 40, 60, 80] {
            assert_eq!(decide(&m, ack(22), || t * SEC).counter, Counter::PassedFlow, "at {t}s");
        }
        // ...but a new connection (another source port) is refused.
        assert_eq!(
            decide(&m, syn_from_port(40001, 22), || 81 * SEC).counter,
            Counter::DroppedProtected
        );
    }

    #[test]
    fn an_idle_flow_expires() {
        let m = model();
        allow_until(&m, 10 * SEC);
        decide(&m, tcp(22), || SEC);
        let idle = m.config.idle_timeout_ns / SEC;
        assert_eq!(decide(&m, ack(22), || (idle + 2) * SEC).counter, Counter::DroppedProtected);
    }

    #[test]
    fn fin_or_rst_closes_a_flow_after_the_grace() {
        for end in [tcp_flags::FIN | tcp_flags::ACK, tcp_flags::RST] {
            let m = model();
            allow_until(&m, 10 * SEC);
            decide(&m, tcp(22), || SEC);
            assert_eq!(
                decide(&m, packet(Transport::Tcp, 22, end), || 20 * SEC).counter,
                Counter::PassedFlow
            );
            // The closing handshake still passes...
            assert_eq!(decide(&m, ack(22), || 21 * SEC).counter, Counter::PassedFlow);
            // ...then the flow is gone for good, even for a new SYN on it.
            let after = 20 * SEC + m.config.close_grace_ns;
            assert_eq!(decide(&m, ack(22), || after).counter, Counter::DroppedProtected);
            assert_eq!(decide(&m, tcp(22), || after + SEC).counter, Counter::DroppedProtected);
        }
    }

    #[test]
    fn udp_flows_work_like_tcp_ones() {
        let mut m = model();
        m.ports.insert(51820, port_flags::PROTECTED_UDP);
        allow_until(&m, 10 * SEC);
        let dgram = packet(Transport::Udp, 51820, 0);
        assert_eq!(decide(&m, dgram, || SEC).counter, Counter::PassedAllowed);
        assert_eq!(decide(&m, dgram, || 100 * SEC).counter, Counter::PassedFlow);
    }

    #[test]
    fn always_allowed_networks_pass_by_longest_prefix() {
        let mut m = model();
        m.nets.push((SourceKey::v4([10, 0, 0, 0]), 8));
        assert_eq!(decide(&m, tcp(22), || SEC).counter, Counter::PassedNetwork);
        m.nets.clear();
        m.flows.borrow_mut().clear();
        assert_eq!(decide(&m, tcp(22), || SEC).counter, Counter::DroppedProtected);
        m.nets.push((SourceKey::v4([10, 0, 1, 0]), 24));
        assert_eq!(decide(&m, tcp(22), || SEC).counter, Counter::DroppedProtected);
    }
}
