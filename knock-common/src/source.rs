//! Source addresses as map keys: one fixed-size key for IPv4 and IPv6.

use bytemuck::{Pod, Zeroable};

/// Address family tags used in [`SourceKey::family`].
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// A source address, IPv4 or IPv6, as one fixed-size map key.
///
/// The family is part of the key so that an IPv4 entry never admits an IPv6
/// packet whose source merely looks like it (`::ffff:a.b.c.d`). IPv4 addresses
/// occupy `addr[..4]`; the rest stays zero. Aligned to 4 (it has no
/// padding either way) so the program builds and compares it in words.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
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
        Self { family: FAMILY_V4, _pad: [0; 3], addr }
    }

    pub const fn v6(addr: [u8; 16]) -> Self {
        Self { family: FAMILY_V6, _pad: [0; 3], addr }
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

    /// The prefix failed knocks are counted against: the whole IPv4
    /// address, or the IPv6 /64 (one host usually owns a whole /64, so
    /// per-address counting would give it 2^64 fresh budgets).
    #[inline(always)]
    pub const fn miss_prefix(&self) -> PrefixKey {
        let len = if self.family == FAMILY_V6 { 8 } else { 4 };
        let mut prefix = [0u8; 8];
        let mut i = 0;
        while i < len {
            prefix[i] = self.addr[i];
            i += 1;
        }
        PrefixKey { family: self.family, _pad: [0; 7], prefix }
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

/// An IPv4 address or an IPv6 /64: the unit knock failures are limited by.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct PrefixKey {
    pub family: u8,
    pub _pad: [u8; 7],
    pub prefix: [u8; 8],
}

/// Key of the always-allowed networks trie: the family byte, then the
/// address (IPv4 in the first 4 bytes). The prefix length counts the family
/// byte, so IPv4 and IPv6 prefixes never match each other.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct NetKey {
    pub family: u8,
    pub addr: [u8; 16],
}

impl NetKey {
    pub const fn of(src: &SourceKey) -> Self {
        Self { family: src.family, addr: src.addr }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_key_round_trips_through_ip() {
        for ip in ["192.0.2.7", "2001:db8::1", "::ffff:10.0.0.2"] {
            let ip: core::net::IpAddr = ip.parse().unwrap();
            assert_eq!(SourceKey::from(ip).ip(), Some(ip));
        }
    }

    #[test]
    fn misses_count_per_ipv4_address_and_per_ipv6_slash_64() {
        let key = |ip: &str| SourceKey::from(ip.parse::<core::net::IpAddr>().unwrap());
        assert_ne!(key("192.0.2.7").miss_prefix(), key("192.0.2.8").miss_prefix());
        assert_eq!(key("2001:db8::1").miss_prefix(), key("2001:db8::ffff:1").miss_prefix());
        assert_ne!(key("2001:db8::1").miss_prefix(), key("2001:db8:0:1::1").miss_prefix());
        // The families never share a prefix.
        assert_ne!(key("32.1.13.184").miss_prefix(), key("2001:db8::").miss_prefix());
    }
}
