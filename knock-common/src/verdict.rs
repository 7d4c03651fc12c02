//! What happens to a parsed packet: the enforcement decision, written once as
//! plain Rust over plain data so the XDP program and host tests share it.

use crate::maps::{AllowEntry, Counter, SourceKey, port_flags};

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
        dport: u16,
    },
}

/// The maps the decision reads, behind a trait so the same decision runs on
/// BPF maps in the kernel and on plain collections in host tests.
pub trait Tables {
    /// The [`port_flags`] of `port`.
    fn port_flags(&self, port: u16) -> u32;
    /// The allow entry of `src`, if any.
    fn allowed(&self, src: &SourceKey) -> Option<AllowEntry>;
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

/// Decides the fate of a parsed packet. `now_ns` is only read for packets to a
/// protected port from a source in the allow map, which keeps the clock read
/// off the path of unrelated traffic.
#[inline(always)]
pub fn decide<T: Tables>(tables: &T, parsed: Parsed, now_ns: impl FnOnce() -> u64) -> Decision {
    let (src, proto, dport) = match parsed {
        Parsed::Unrelated => return Decision::new(XDP_PASS, Counter::Passed),
        Parsed::Malformed => return Decision::new(XDP_DROP, Counter::DroppedMalformed),
        Parsed::Transport { src, proto, dport } => (src, proto, dport),
    };
    if tables.port_flags(dport) & proto.protected_flag() == 0 {
        return Decision::new(XDP_PASS, Counter::Passed);
    }
    match tables.allowed(&src) {
        // The kernel enforces the deadline itself: userspace may sweep late.
        Some(entry) if now_ns() < entry.deadline_ns => {
            Decision::new(XDP_PASS, Counter::PassedAllowed)
        }
        _ => Decision::new(XDP_DROP, Counter::DroppedProtected),
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::collections::HashMap;

    use super::*;
    use crate::maps::allow_origin;

    #[derive(Default)]
    struct Model {
        ports: HashMap<u16, u32>,
        allow: HashMap<SourceKey, AllowEntry>,
    }

    impl Tables for Model {
        fn port_flags(&self, port: u16) -> u32 {
            self.ports.get(&port).copied().unwrap_or(0)
        }
        fn allowed(&self, src: &SourceKey) -> Option<AllowEntry> {
            self.allow.get(src).copied()
        }
    }

    const CLIENT: SourceKey = SourceKey::v4([10, 0, 0, 2]);

    fn tcp(dport: u16) -> Parsed {
        Parsed::Transport {
            src: CLIENT,
            proto: Transport::Tcp,
            dport,
        }
    }

    fn model() -> Model {
        let mut m = Model::default();
        m.ports.insert(22, port_flags::PROTECTED_TCP);
        m
    }

    fn allow_until(m: &mut Model, deadline_ns: u64) {
        m.allow.insert(
            CLIENT,
            AllowEntry {
                deadline_ns,
                origin: allow_origin::MANUAL,
                _pad: 0,
            },
        );
    }

    #[test]
    fn unprotected_port_passes_without_reading_the_clock() {
        let d = decide(&model(), tcp(80), || panic!("clock read"));
        assert_eq!(d, Decision::new(XDP_PASS, Counter::Passed));
    }

    #[test]
    fn protection_is_per_protocol() {
        let udp = Parsed::Transport {
            src: CLIENT,
            proto: Transport::Udp,
            dport: 22,
        };
        assert_eq!(decide(&model(), udp, || 0).action, XDP_PASS);
        assert_eq!(decide(&model(), tcp(22), || 0).action, XDP_DROP);
    }

    #[test]
    fn stranger_is_dropped_and_allowed_source_passes_until_its_deadline() {
        let mut m = model();
        assert_eq!(
            decide(&m, tcp(22), || 5),
            Decision::new(XDP_DROP, Counter::DroppedProtected)
        );
        allow_until(&mut m, 10);
        assert_eq!(
            decide(&m, tcp(22), || 5),
            Decision::new(XDP_PASS, Counter::PassedAllowed)
        );
        assert_eq!(
            decide(&m, tcp(22), || 10),
            Decision::new(XDP_DROP, Counter::DroppedProtected)
        );
    }

    #[test]
    fn an_ipv4_entry_does_not_admit_the_mapped_ipv6_source() {
        let mut m = model();
        allow_until(&mut m, u64::MAX);
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&[10, 0, 0, 2]);
        let pkt = Parsed::Transport {
            src: SourceKey::v6(mapped),
            proto: Transport::Tcp,
            dport: 22,
        };
        assert_eq!(decide(&m, pkt, || 0).action, XDP_DROP);
    }

    #[test]
    fn malformed_drops_and_unrelated_passes() {
        assert_eq!(
            decide(&model(), Parsed::Malformed, || 0).counter,
            Counter::DroppedMalformed
        );
        assert_eq!(decide(&model(), Parsed::Unrelated, || 0).action, XDP_PASS);
    }

    #[test]
    fn source_key_round_trips_through_ip() {
        for ip in ["192.0.2.7", "2001:db8::1", "::ffff:10.0.0.2"] {
            let ip: core::net::IpAddr = ip.parse().unwrap();
            assert_eq!(SourceKey::from(ip).ip(), Some(ip));
        }
    }
}
