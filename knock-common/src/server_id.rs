//! Server identities: the name a fleet client's sequences are derived for
//! (`docs/sequence-v2.md`, section 2).
//!
//! One spelling per server, so that a client typing `knock WEB1.example.org.`
//! and a server configured with `server_name = "web1.example.org"` derive
//! the same sequence:
//!
//! - an IPv4 address: dotted decimal, four octets, no leading zeros;
//! - an IPv6 address (bare or in brackets, no zone): RFC 5952 text, and an
//!   IPv4-mapped one (`::ffff:a.b.c.d`) is the IPv4 address `a.b.c.d`;
//! - anything else is a host name: ASCII, lowercased, one trailing dot
//!   dropped, labels of 1 to 63 letters, digits and hyphens (not at either
//!   end), at most 253 bytes in all. A text of digits and dots only (with
//!   at least one digit) must be an IPv4 address.
//!
//! `no_std` and allocation-free, like the derivation it feeds.

use core::{
    fmt::{self, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

/// Longest normalized identity: a DNS name's 253 bytes (an address's text
/// is at most 39). The derivation itself takes up to 255 bytes.
pub const MAX_SERVER_ID_LEN: usize = 253;

/// Longest label of a host name (RFC 1035).
const MAX_LABEL_LEN: usize = 63;

/// A normalized server identity.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerId {
    // Bytes past `len` are always 0, so the derived comparisons are exact.
    bytes: [u8; MAX_SERVER_ID_LEN],
    len: u8,
}

/// Why a text is no server identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerIdError {
    Empty,
    /// More than [`MAX_SERVER_ID_LEN`] bytes once normalized.
    TooLong,
    /// A byte outside ASCII: internationalized names go in their `xn--` form.
    NotAscii,
    /// A character other than a letter, digit, hyphen or dot in a name.
    BadCharacter(char),
    /// An empty label, one longer than 63 bytes, or one with a hyphen at an end.
    BadLabel,
    /// Looks like an address (a colon, brackets, or only digits and dots) but is none.
    BadAddress,
}

impl fmt::Display for ServerIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerIdError::Empty => f.write_str("a server name cannot be empty"),
            ServerIdError::TooLong => {
                write!(f, "a server name has at most {MAX_SERVER_ID_LEN} characters")
            }
            ServerIdError::NotAscii => {
                f.write_str("a server name is ASCII (write an international name as xn--...)")
            }
            ServerIdError::BadCharacter(c) => write!(
                f,
                "a server name holds letters, digits, hyphens and dots, not '{}'",
                c.escape_default()
            ),
            ServerIdError::BadLabel => f.write_str(
                "each part of a server name has 1 to 63 characters and no hyphen at either end",
            ),
            ServerIdError::BadAddress => f.write_str(
                "not a valid IPv4 or IPv6 address (an address has no zone and no leading zeros)",
            ),
        }
    }
}

impl core::error::Error for ServerIdError {}

impl ServerId {
    /// Normalizes `text` (see the module docs).
    pub fn parse(text: &str) -> Result<Self, ServerIdError> {
        if text.is_empty() {
            return Err(ServerIdError::Empty);
        }
        if !text.is_ascii() {
            return Err(ServerIdError::NotAscii);
        }
        if let Some(inner) = text.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or(ServerIdError::BadAddress)?;
            let v6 = Ipv6Addr::from_str(inner).map_err(|_| ServerIdError::BadAddress)?;
            return Ok(Self::from_ip(IpAddr::V6(v6)));
        }
        if text.contains(':') {
            let v6 = Ipv6Addr::from_str(text).map_err(|_| ServerIdError::BadAddress)?;
            return Ok(Self::from_ip(IpAddr::V6(v6)));
        }
        if text.bytes().any(|b| b.is_ascii_digit())
            && text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        {
            // core's parser takes exactly four decimal octets without
            // leading zeros, the form the spec allows.
            let v4 = Ipv4Addr::from_str(text).map_err(|_| ServerIdError::BadAddress)?;
            return Ok(Self::from_ip(IpAddr::V4(v4)));
        }
        Self::host_name(text)
    }

    /// The identity of an address: an IPv4-mapped IPv6 address is its IPv4
    /// address, every other one its RFC 5952 text.
    pub fn from_ip(ip: IpAddr) -> Self {
        let mut id = Self { bytes: [0; MAX_SERVER_ID_LEN], len: 0 };
        // Both texts are at most 39 bytes, so the writer never overflows.
        let _ = write!(id, "{}", ip.to_canonical());
        id
    }

    fn host_name(text: &str) -> Result<Self, ServerIdError> {
        let name = text.strip_suffix('.').unwrap_or(text);
        if name.len() > MAX_SERVER_ID_LEN {
            return Err(ServerIdError::TooLong);
        }
        for label in name.split('.') {
            if let Some(c) = label.chars().find(|c| !c.is_ascii_alphanumeric() && *c != '-') {
                return Err(ServerIdError::BadCharacter(c));
            }
            if label.is_empty()
                || label.len() > MAX_LABEL_LEN
                || label.starts_with('-')
                || label.ends_with('-')
            {
                return Err(ServerIdError::BadLabel);
            }
        }
        let mut id = Self { bytes: [0; MAX_SERVER_ID_LEN], len: name.len() as u8 };
        for (to, from) in id.bytes.iter_mut().zip(name.bytes()) {
            *to = from.to_ascii_lowercase();
        }
        Ok(id)
    }

    /// The normalized bytes: what goes into the derivation.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored.
        core::str::from_utf8(self.as_bytes()).expect("a server identity is ASCII")
    }
}

/// Appends to the identity while building it from an address.
impl fmt::Write for ServerId {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let at = usize::from(self.len);
        let end = at + s.len();
        if end > MAX_SERVER_ID_LEN {
            return Err(fmt::Error);
        }
        self.bytes[at..end].copy_from_slice(s.as_bytes());
        self.len = end as u8;
        Ok(())
    }
}

impl FromStr for ServerId {
    type Err = ServerIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ServerId").field(&self.as_str()).finish()
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::{String, ToString};

    use super::*;

    fn norm(text: &str) -> Result<String, ServerIdError> {
        ServerId::parse(text).map(|id| id.as_str().to_string())
    }

    #[test]
    fn names_are_lowercased_without_the_trailing_dot() {
        assert_eq!(norm("web1.example.org").unwrap(), "web1.example.org");
        assert_eq!(norm("WEB1.Example.ORG.").unwrap(), "web1.example.org");
        assert_eq!(norm("localhost").unwrap(), "localhost");
        assert_eq!(norm("a").unwrap(), "a");
        assert_eq!(norm("xn--bcher-kva.example").unwrap(), "xn--bcher-kva.example");
        assert_eq!(norm("node-7.k8s.internal").unwrap(), "node-7.k8s.internal");
        assert_eq!(norm("1a.example").unwrap(), "1a.example");
    }

    #[test]
    fn addresses_take_their_canonical_text() {
        assert_eq!(norm("192.0.2.1").unwrap(), "192.0.2.1");
        assert_eq!(norm("2001:DB8:0:0:0:0:0:1").unwrap(), "2001:db8::1");
        assert_eq!(norm("[2001:db8::1]").unwrap(), "2001:db8::1");
        assert_eq!(norm("2001:db8:0:1:1:1:1:1").unwrap(), "2001:db8:0:1:1:1:1:1");
        assert_eq!(norm("1:0:0:2:0:0:3:4").unwrap(), "1::2:0:0:3:4");
        assert_eq!(norm("::ffff:192.0.2.1").unwrap(), "192.0.2.1");
        assert_eq!(norm("::ffff:c000:201").unwrap(), "192.0.2.1");
        assert_eq!(norm("::192.0.2.1").unwrap(), "::c000:201");
        assert_eq!(norm("::").unwrap(), "::");
        let ip: IpAddr = "2001:db8::2".parse().unwrap();
        assert_eq!(ServerId::from_ip(ip), ServerId::parse("2001:0db8::0002").unwrap());
    }

    #[test]
    fn what_is_refused() {
        use ServerIdError::*;
        for (text, err) in [
            ("", Empty),
            (".", BadLabel),
            ("web1..example", BadLabel),
            ("-web1", BadLabel),
            ("web1-.example", BadLabel),
            ("web_1", BadCharacter('_')),
            ("web 1", BadCharacter(' ')),
            ("web1/x", BadCharacter('/')),
            ("web1.example.org..", BadLabel),
            ("wéb1", NotAscii),
            ("01.2.3.4", BadAddress),
            ("1.2.3", BadAddress),
            ("1.2.3.4.", BadAddress),
            ("256.0.0.1", BadAddress),
            ("fe80::1%eth0", BadAddress),
            ("[192.0.2.1]", BadAddress),
            ("[2001:db8::1", BadAddress),
            ("2001:db8::1]", BadAddress),
            ("web1:22", BadAddress),
        ] {
            assert_eq!(ServerId::parse(text), Err(err), "{text:?}");
            assert!(!err.to_string().contains('\n'));
        }
        assert_eq!(
            BadCharacter('_').to_string(),
            "a server name holds letters, digits, hyphens and dots, not '_'"
        );
        let label = "a".repeat(63);
        assert!(ServerId::parse(&label).is_ok());
        assert_eq!(ServerId::parse(&"a".repeat(64)), Err(BadLabel));
        // 253 bytes is the longest name, with or without its trailing dot.
        let longest = [&label[..], &label[..], &label[..], &label[..61]].join(".");
        assert_eq!(longest.len(), 253);
        assert_eq!(norm(&longest).unwrap(), longest);
        assert_eq!(norm(&std::format!("{longest}.")).unwrap(), longest);
        assert_eq!(ServerId::parse(&std::format!("{longest}a")), Err(TooLong));
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        for text in ["WEB1.example.org.", "2001:DB8::1", "[::1]", "::ffff:10.0.0.1", "10.0.0.1"] {
            let once = ServerId::parse(text).unwrap();
            assert_eq!(ServerId::parse(once.as_str()), Ok(once), "{text}");
        }
    }
}
