//! Map names, keys and values: the contract between the XDP program and userspace.

use bytemuck::{Pod, Zeroable};

/// Name of the XDP program inside the object.
pub const PROGRAM_NAME: &str = "knock";

/// Per-port flags ([`port_flags`]), an array indexed by destination port.
pub const MAP_PORT_FLAGS: &str = "PORT_FLAGS";
/// Allowed sources: [`SourceKey`] → [`AllowEntry`].
pub const MAP_ALLOW: &str = "ALLOW";
/// Per-CPU decision counters, indexed by [`Counter`].
pub const MAP_COUNTERS: &str = "COUNTERS";

/// Every map the object must expose; a test checks the loaded object against it.
pub const ALL_MAPS: [&str; 3] = [MAP_PORT_FLAGS, MAP_ALLOW, MAP_COUNTERS];

/// One entry per possible port, so "is this port protected" is a single array
/// load on the hot path instead of a hash lookup.
pub const PORT_COUNT: u32 = 1 << 16;

/// Upper bound of the allow map. Userspace refuses new manual entries when it
/// is full rather than letting the kernel evict someone who was admitted.
pub const ALLOW_MAX_ENTRIES: u32 = 65_536;

/// Bits of a [`MAP_PORT_FLAGS`] entry.
pub mod port_flags {
    /// TCP packets to this port need an allowed source.
    pub const PROTECTED_TCP: u32 = 1 << 0;
    /// UDP packets to this port need an allowed source.
    pub const PROTECTED_UDP: u32 = 1 << 1;
}

/// Address family tags used in [`SourceKey::family`].
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// A source address, IPv4 or IPv6, as one fixed-size map key.
///
/// The family is part of the key so that an IPv4 entry never admits an IPv6
/// packet whose source merely looks like it (`::ffff:a.b.c.d`). IPv4 addresses
/// occupy `addr[..4]`; the rest stays zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct SourceKey {
    pub family: u8,
    pub _pad: [u8; 3],
    pub addr: [u8; 16],
}

impl SourceKey {
    pub const fn v4(octets: [u8; 4]) -> Self {
        let mut addr = [0; 16];
        addr[0] = octets[0];
        addr[1] = octets[1];
        addr[2] = octets[2];
        addr[3] = octets[3];
        Self {
            family: FAMILY_V4,
            _pad: [0; 3],
            addr,
        }
    }

    pub const fn v6(addr: [u8; 16]) -> Self {
        Self {
            family: FAMILY_V6,
            _pad: [0; 3],
            addr,
        }
    }

    /// The address this key stands for, or `None` for a key with an unknown family.
    pub fn ip(&self) -> Option<core::net::IpAddr> {
        match self.family {
            FAMILY_V4 => {
                let [a, b, c, d, ..] = self.addr;
                Some(core::net::Ipv4Addr::new(a, b, c, d).into())
            }
            FAMILY_V6 => Some(core::net::Ipv6Addr::from(self.addr).into()),
            _ => None,
        }
    }
}

impl From<core::net::IpAddr> for SourceKey {
    fn from(ip: core::net::IpAddr) -> Self {
        match ip {
            core::net::IpAddr::V4(v4) => Self::v4(v4.octets()),
            core::net::IpAddr::V6(v6) => Self::v6(v6.octets()),
        }
    }
}

/// Why a source is in the allow map.
pub mod allow_origin {
    /// Put there by `knock-xdp allow`.
    pub const MANUAL: u32 = 1;
}

/// An allowed source. The kernel compares `deadline_ns` with
/// `bpf_ktime_get_boot_ns()` on every lookup, so an expired entry never admits a
/// packet even when userspace has not swept it yet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct AllowEntry {
    /// CLOCK_BOOTTIME nanoseconds after which the entry admits nothing.
    pub deadline_ns: u64,
    /// One of [`allow_origin`].
    pub origin: u32,
    pub _pad: u32,
}

/// The per-CPU counters, one slot each in [`MAP_COUNTERS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Not addressed to a protected port: passed untouched.
    Passed = 0,
    /// To a protected port from a source that is not allowed: dropped.
    DroppedProtected = 1,
    /// To a protected port from an allowed source: passed.
    PassedAllowed = 2,
    /// Could reach a protected port but could not be parsed: dropped.
    DroppedMalformed = 3,
}

impl Counter {
    pub const ALL: [Counter; 4] = [
        Counter::Passed,
        Counter::DroppedProtected,
        Counter::PassedAllowed,
        Counter::DroppedMalformed,
    ];
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Stable name used in `status` output and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Passed => "passed",
            Counter::DroppedProtected => "dropped_protected",
            Counter::PassedAllowed => "passed_allowed",
            Counter::DroppedMalformed => "dropped_malformed",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both are `#[repr(C)]`, `Copy`, and `bytemuck::Pod` (which proves
    // they have no padding bytes), so any bit pattern is valid.
    unsafe impl aya::Pod for super::SourceKey {}
    unsafe impl aya::Pod for super::AllowEntry {}
}
