//! Configuration that is dangerous or meaningless, refused before anything
//! changes, each with one line that says why.
//!
//! Meaningless (refused outright): an address that can never be a packet's
//! source, and a knock space that overlaps the host's ephemeral ports.
//! Dangerous (refused unless `--force`, which is then logged as a warning
//! and recorded as `forced` in the audit trail before the change is made):
//! an always-allowed network wider than a /8 (IPv4) or /32 (IPv6), a static
//! sequence of fewer than 3 knocks, a knock space that holds a protected
//! port or a port with a listening socket, and protecting a port that lies
//! in a knock space.
//!
//! A client's knock space, per protocol, is where its knocks can fall: the
//! range a rotating client draws from (less its excluded ports), or the span
//! from the lowest to the highest port of a static sequence.

use std::{collections::BTreeSet, net::IpAddr};

use anyhow::{Context as _, Result, bail};
use tracing::warn;

use crate::{
    audit,
    clients::Client,
    config::Config,
    nets::Cidr,
    ports::{Proto, ProtoPort},
    profile::{Knock, Profile},
    state::StateDir,
};

/// Widest always-allowed networks accepted without `--force`.
pub const WIDEST_V4: u8 = 8;
pub const WIDEST_V6: u8 = 32;

/// Fewest knocks of a static sequence accepted without `--force`: one knock
/// is one SYN to one port, two are found by a scan of port pairs.
pub const SHORTEST_STATIC: usize = 3;

/// Why no packet can ever come from (an address of) `net`, if so.
pub fn never_a_source(net: &Cidr) -> Option<String> {
    let within = |outer: &str| outer.parse::<Cidr>().expect("a valid network").covers(net);
    let why = match net.addr() {
        IpAddr::V4(v4) if net.is_host() && v4.is_unspecified() => "the unspecified address",
        IpAddr::V4(v4) if net.is_host() && v4.is_broadcast() => "the broadcast address",
        IpAddr::V4(_) if within("0.0.0.0/8") => "'this network', 0.0.0.0/8",
        IpAddr::V4(_) if within("224.0.0.0/4") => "multicast",
        IpAddr::V6(v6) if net.is_host() && v6.is_unspecified() => "the unspecified address",
        IpAddr::V6(_) if within("ff00::/8") => "multicast",
        IpAddr::V6(v6) if within("::ffff:0:0/96") => {
            let v4 = v6.to_ipv4_mapped().expect("inside ::ffff:0:0/96");
            return Some(format!(
                "{} is IPv4-mapped: IPv4 packets carry {v4} as their source, never {}; \
                 allow {v4} instead",
                shown(net),
                shown(net)
            ));
        }
        _ => return None,
    };
    Some(format!(
        "{} can never be a packet's source address ({why}): allowing it admits nobody",
        shown(net)
    ))
}

/// Why always allowing `net` would switch protection off for too many, if so.
pub fn too_wide(net: &Cidr) -> Option<String> {
    let (widest, family) =
        if net.addr().is_ipv4() { (WIDEST_V4, "IPv4") } else { (WIDEST_V6, "IPv6") };
    (net.prefix() < widest).then(|| {
        format!(
            "always allowing {net} admits more than a /{widest} of {family} without a knock \
             (/0 switches protection off)"
        )
    })
}

/// A network as users write it: a lone address without its `/32`.
fn shown(net: &Cidr) -> String {
    if net.is_host() { net.addr().to_string() } else { net.to_string() }
}

/// Where one protocol's knocks of a client can fall (for an SPA client: its
/// datagrams).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KnockSpace {
    pub proto: Proto,
    pub lo: u16,
    pub hi: u16,
    /// Ports of the range a rotating client never knocks on.
    pub exclude: Vec<u16>,
}

impl KnockSpace {
    /// A client's knock spaces: its range, or per protocol its static span;
    /// an SPA client's UDP range.
    pub fn of(profile: &Profile) -> Vec<KnockSpace> {
        match &profile.knock {
            Knock::Spa { ports, .. } => {
                vec![KnockSpace {
                    proto: Proto::Udp,
                    lo: ports.0,
                    hi: ports.1,
                    exclude: Vec::new(),
                }]
            }
            Knock::Rotating { proto, ports, exclude, .. } => {
                vec![KnockSpace {
                    proto: *proto,
                    lo: ports.0,
                    hi: ports.1,
                    exclude: exclude.clone(),
                }]
            }
            Knock::Static { steps } => [Proto::Tcp, Proto::Udp]
                .into_iter()
                .filter_map(|proto| {
                    let ports = steps.iter().filter(|s| s.proto == proto).map(|s| s.port);
                    let lo = ports.clone().min()?;
                    let hi = ports.max()?;
                    Some(KnockSpace { proto, lo, hi, exclude: Vec::new() })
                })
                .collect(),
        }
    }

    /// Every port of the space.
    pub fn ports(&self) -> impl Iterator<Item = ProtoPort> + '_ {
        (self.lo..=self.hi)
            .filter(|p| !self.exclude.contains(p))
            .map(|port| ProtoPort::new(self.proto, port))
    }

    pub fn contains(&self, port: &ProtoPort) -> bool {
        port.proto == self.proto
            && (self.lo..=self.hi).contains(&port.port)
            && !self.exclude.contains(&port.port)
    }

    /// The first port of this space in `lo..=hi` (of the same protocol), if any.
    fn overlap(&self, lo: u16, hi: u16) -> Option<u16> {
        (self.lo.max(lo)..=self.hi.min(hi)).find(|p| !self.exclude.contains(p))
    }
}

impl std::fmt::Display for KnockSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = if self.proto == Proto::Udp { "udp" } else { "tcp" };
        if self.lo == self.hi {
            write!(f, "{}/{proto}", self.lo)
        } else {
            write!(f, "{}-{}/{proto}", self.lo, self.hi)
        }
    }
}

/// The host's ephemeral port range (`net.ipv4.ip_local_port_range`, of this
/// network namespace; it applies to IPv6 too), if it can be read.
pub fn ephemeral_ports() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut fields = text.split_whitespace().map(str::parse::<u16>);
    Some((fields.next()?.ok()?, fields.next()?.ok()?))
}

/// Refuses (no `--force`) a client whose knocks could fall on ephemeral
/// ports: replies to the host's own outgoing connections arrive there, and
/// would be taken for knocks (or dropped as knocks).
pub fn knock_space_clear_of_ephemeral(profile: &Profile) -> Result<()> {
    let Some((lo, hi)) = ephemeral_ports() else { return Ok(()) };
    for space in KnockSpace::of(profile) {
        if let Some(port) = space.overlap(lo, hi) {
            bail!(
                "knock ports {space} overlap the host's ephemeral ports {lo}-{hi} \
                 (net.ipv4.ip_local_port_range; {port} is in both), where replies to its own \
                 connections arrive: choose knock ports outside them (the default 61000-65535 is)"
            );
        }
    }
    Ok(())
}

/// What is dangerous about a new client (refused unless `--force`).
pub fn client_refusals(
    profile: &Profile,
    protected: &BTreeSet<ProtoPort>,
    listening: &BTreeSet<ProtoPort>,
) -> Vec<String> {
    let mut refusals = Vec::new();
    if let Knock::Static { steps } = &profile.knock
        && steps.len() < SHORTEST_STATIC
    {
        refusals.push(format!(
            "a static sequence of {} knock{} is found by scanning (one SYN opens a one-knock \
             door); use at least {SHORTEST_STATIC}",
            steps.len(),
            if steps.len() == 1 { "" } else { "s" }
        ));
    }
    for space in KnockSpace::of(profile) {
        let hint = if matches!(profile.knock, Knock::Rotating { .. }) {
            "choose other --ports or --exclude it"
        } else {
            "choose other knock ports"
        };
        if let Some(port) = protected.iter().find(|p| space.contains(p)) {
            refusals.push(format!(
                "protected port {port} lies in this client's knock ports {space}: a sequence \
                 on it would hide it, and connections to it would be taken for knocks; {hint}"
            ));
        }
        if let Some(port) = listening.iter().find(|p| space.contains(p)) {
            refusals.push(format!(
                "a service listens on {port}, in this client's knock ports {space}: a sequence \
                 on it would hide it, and connections to it would be taken for knocks; {hint}"
            ));
        }
    }
    refusals
}

/// What is dangerous about protecting `ports` (refused unless `--force`).
pub fn protect_refusals(ports: &BTreeSet<ProtoPort>, clients: &[Client]) -> Vec<String> {
    let mut refusals = Vec::new();
    for port in ports {
        for client in clients {
            if let Some(space) =
                KnockSpace::of(&client.profile).into_iter().find(|s| s.contains(port))
            {
                refusals.push(format!(
                    "{port} lies in the knock ports {space} of client '{}': a sequence on it \
                     would hide it, and connections to it would be taken for knocks",
                    client.profile.name
                ));
            }
        }
    }
    refusals
}

/// The config file's always-allowed networks: an error for one that can
/// never be a source, and what is dangerous about the rest.
pub fn config_refusals(config: &Config) -> Result<Vec<String>> {
    let mut refusals = Vec::new();
    for net in &config.allow {
        if let Some(why) = never_a_source(net) {
            bail!("{}: allow: {why}", config.describe());
        }
        if let Some(why) = too_wide(net) {
            refusals.push(format!("{}: allow: {why}", config.describe()));
        }
    }
    Ok(refusals)
}

/// Without `force`, the first refusal is the error (with the way past it).
/// With it, each is logged as a warning and recorded as `forced` in the
/// audit trail (about `subject`, and `client` when there is one) before the
/// change is made; a record that cannot be written stops the change.
pub fn force_or_refuse(
    state: &StateDir,
    force: bool,
    subject: &str,
    client: Option<&str>,
    refusals: &[String],
) -> Result<()> {
    let Some(first) = refusals.first() else { return Ok(()) };
    if !force {
        bail!("{first} (add --force to do it anyway)");
    }
    state.create()?;
    for reason in refusals {
        warn!(subject, "--force: {reason}");
        let mut record = audit::Record::now("forced", subject.to_owned());
        record.client = client.map(str::to_owned);
        record.detail = Some(reason.clone());
        audit::append(state, &record)
            .context("cannot record the forced change in the audit trail; nothing changed")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::parse_static;

    fn net(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    #[test]
    fn addresses_that_are_never_a_source() {
        for bad in [
            "0.0.0.0",
            "255.255.255.255",
            "0.1.2.3",
            "224.0.0.1",
            "239.0.0.0/8",
            "::",
            "ff02::1",
            "::ffff:10.77.0.9",
            "::ffff:10.0.0.0/104",
        ] {
            assert!(never_a_source(&net(bad)).is_some(), "{bad}");
        }
        for good in ["10.77.0.9", "0.0.0.0/0", "192.0.2.0/24", "2001:db8::1", "::/0", "fe80::1"] {
            assert_eq!(never_a_source(&net(good)), None, "{good}");
        }
        let why = never_a_source(&net("::ffff:10.77.0.9")).unwrap();
        assert!(why.contains("allow 10.77.0.9 instead"), "{why}");
    }

    #[test]
    fn networks_wider_than_a_slash_8_or_32_are_too_wide() {
        for wide in ["0.0.0.0/0", "10.0.0.0/7", "::/0", "2001:db8::/31"] {
            assert!(too_wide(&net(wide)).is_some(), "{wide}");
        }
        for fine in ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"] {
            assert_eq!(too_wide(&net(fine)), None, "{fine}");
        }
    }

    #[test]
    fn knock_spaces_are_ranges_or_static_spans_per_protocol() {
        let legacy = Profile {
            name: "legacy".into(),
            knock: Knock::Static { steps: parse_static("7000,8000:udp,9000").unwrap() },
        };
        let spaces = KnockSpace::of(&legacy);
        let shown: Vec<String> = spaces.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["7000-9000/tcp", "8000/udp"]);
        let port = |text: &str| -> ProtoPort { text.parse().unwrap() };
        assert!(spaces[0].contains(&port("8022/tcp")));
        assert!(!spaces.iter().any(|s| s.contains(&port("8022/udp"))));

        let protected = [port("8022/tcp")].into();
        let refusals = client_refusals(&legacy, &protected, &BTreeSet::new());
        assert_eq!(refusals.len(), 1, "{refusals:?}");
        assert!(refusals[0].contains("protected port 8022/tcp"), "{refusals:?}");
        let short = Profile {
            name: "web".into(),
            knock: Knock::Static { steps: parse_static("80").unwrap() },
        };
        let listening = [port("80/tcp")].into();
        let refusals = client_refusals(&short, &BTreeSet::new(), &listening);
        assert_eq!(refusals.len(), 2, "{refusals:?}");
        assert!(refusals[0].contains("1 knock is found"), "{refusals:?}");
        assert!(refusals[1].contains("listens on 80/tcp"), "{refusals:?}");

        let excluded = KnockSpace {
            proto: Proto::Tcp,
            lo: 60990,
            hi: 61010,
            exclude: (60990..61000).collect(),
        };
        assert_eq!(excluded.overlap(32768, 60999), None);
        assert_eq!(excluded.overlap(32768, 61000), Some(61000));
    }
}
