//! The knock client: sends a profile's sequence to a host and, with
//! `--check`, knocks again with the next sequence the server accepts while
//! the port stays filtered. A fleet profile's sequence is derived for each
//! server from the server's identity: the host as typed, or the NAME of a
//! `NAME=ADDRESS` argument.

use std::{
    net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs as _, UdpSocket},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow, bail};
use knock_common::{server_id::ServerId, spa};

use crate::{
    ports::{Proto, ProtoPort},
    probe::{self, PortState},
    profile::{Key, Knock, Profile, knock_syntax},
};

pub mod record;

use record::KnockRecord;

/// How long `--check` waits for the protected port to answer.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The door opens with the last knock; the probe gives that packet this long.
const SETTLE: Duration = Duration::from_millis(100);

/// Parses `--at`: RFC 3339 in UTC (`2026-11-25T12:00:00Z`).
pub fn parse_time(text: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339(text).map_err(|_| {
        format!("invalid time '{text}' (expected RFC 3339 in UTC, e.g. 2026-11-25T12:00:00Z)")
    })
}

/// Whole UNIX seconds of `time`.
pub fn unix_secs(time: SystemTime) -> Result<u64> {
    Ok(time.duration_since(UNIX_EPOCH).map_err(|_| anyhow!("time before 1970"))?.as_secs())
}

/// The first address of `host` (an address, `[v6]`, or a name).
pub fn resolve(host: &str) -> Result<IpAddr> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse() {
        return Ok(ip);
    }
    (bare, 0)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve '{host}'"))?
        .next()
        .map(|a| a.ip())
        .with_context(|| format!("'{host}' has no address"))
}

/// One server to knock on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Server {
    /// Where the knocks go.
    pub addr: IpAddr,
    /// What a fleet profile derives the server's sequences from (`None`
    /// for other profiles, whose sequences are the same everywhere).
    pub id: Option<ServerId>,
}

impl Server {
    /// The key of the slots record: a fleet profile's sequences belong to
    /// the server's identity (reached at any of its addresses), any other
    /// profile's to the address.
    pub fn record_key(&self) -> ServerId {
        self.id.unwrap_or_else(|| ServerId::from_ip(self.addr))
    }
}

/// A `knock` HOST argument for `profile`: `HOST` (an address, `[v6]` or a
/// name), or `NAME=ADDRESS` to knock on ADDRESS as the server named NAME.
/// Only a fleet profile needs the name; it must then be a valid server
/// identity (docs/sequence-v2.md, section 2), and is checked before any
/// name is resolved.
pub fn server(profile: &Profile, host: &str) -> Result<Server> {
    let (name, addr) = host.split_once('=').unwrap_or((host, host));
    let id = if profile.is_fleet() {
        let id = ServerId::parse(name).map_err(|e| {
            anyhow!(
                "'{name}' cannot name a server for a fleet profile: {e} (knock NAME=ADDRESS, \
                 with NAME the server's server_name)"
            )
        })?;
        Some(id)
    } else {
        None
    };
    Ok(Server { addr: resolve(addr)?, id })
}

/// The sequence for `at` as one line: `61001 62002 63003:udp`.
pub fn sequence_line(steps: &[ProtoPort]) -> String {
    steps.iter().map(knock_syntax).collect::<Vec<_>>().join(" ")
}

/// Sends the knocks: a SYN per TCP step (a connect that is abandoned after
/// `delay`), a datagram per UDP step, `delay` apart.
pub fn send(target: IpAddr, steps: &[ProtoPort], delay: Duration) -> Result<()> {
    for (i, step) in steps.iter().enumerate() {
        let addr = SocketAddr::new(target, step.port);
        match step.proto {
            Proto::Tcp => {
                // The knock port drops the SYN, so this times out after
                // `delay`; closing a socket that never connected sends
                // nothing more. A delay under a second means no retransmission.
                let started = std::time::Instant::now();
                let _ = TcpStream::connect_timeout(&addr, delay.max(Duration::from_millis(1)));
                if let Some(rest) = delay.checked_sub(started.elapsed()) {
                    thread::sleep(rest);
                }
            }
            Proto::Udp => {
                let bind: SocketAddr =
                    if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("valid");
                let socket = UdpSocket::bind(bind).context("cannot open a UDP socket")?;
                socket.send_to(b"knock", addr).with_context(|| format!("cannot send to {addr}"))?;
                if i + 1 < steps.len() {
                    thread::sleep(delay);
                }
            }
        }
    }
    Ok(())
}

/// The knocks a profile makes at `at` (now when `None`) at `server` (for a
/// fleet profile), with the slot.
pub fn steps_at(
    profile: &Profile,
    at: Option<SystemTime>,
    server: Option<&ServerId>,
) -> Result<(Option<u64>, Vec<ProtoPort>)> {
    let unix = unix_secs(at.unwrap_or_else(SystemTime::now))?;
    Ok((profile.slot_at(unix), profile.sequence_at(unix, server)?))
}

/// The slots whose sequences the server accepts at `now` (since the epoch),
/// best first.
///
/// The server accepts the slots s-1, s and s+1 around its own current slot s,
/// so our current slot is the best guess whatever the skew between the two
/// clocks. Of the neighbours, the one on the side of the nearer boundary comes
/// next: early in a slot, a server whose clock is behind ours is still in s-1
/// and does not accept s+1 yet; late in a slot, one whose clock is ahead is
/// already in s+1 and no longer accepts s-1.
pub fn slot_order(now: Duration, slot_secs: u32) -> [u64; 3] {
    let len = u128::from(slot_secs) * 1000;
    let ms = now.as_millis();
    let slot = (ms / len) as u64;
    let (before, after) = (slot.saturating_sub(1), slot + 1);
    if ms % len < len / 2 { [slot, before, after] } else { [slot, after, before] }
}

/// How to knock on one server.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Between two knocks of a sequence.
    pub delay: Duration,
    /// Probe this TCP port after the knock, and knock again while it is filtered.
    pub check: Option<u16>,
    /// Knocks after the first, while the port stays filtered.
    pub retries: u32,
    /// Knock as at this time (the same for every try) instead of now.
    pub at: Option<SystemTime>,
    /// SPA: the address to admit instead of the datagram's source.
    pub admit: Option<IpAddr>,
}

/// How a knock on one server went.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    pub tries: u32,
    /// From the first knock to the last probe.
    pub elapsed: Duration,
    /// With `--check`: the port as the last probe found it.
    pub port: Option<(SocketAddr, PortState)>,
    /// The port stayed filtered and the server accepts no sequence that was
    /// not tried yet.
    pub exhausted: bool,
}

/// Knocks on `server` with `profile`, reporting each try (the line `knock`
/// prints) to `on_try`.
///
/// A rotating sequence is sent at most once per server: the server admits a
/// sequence once and refuses it afterwards as a replay. So a retry takes the
/// next slot of [`slot_order`] that `record` has not seen sent to this
/// server, in this run or an earlier one. A fleet profile derives each
/// server's sequences from `server.id`, and `record` keeps them by that. A run that leaves the port
/// filtered forgets its slots again: none of them let us in, and they most
/// likely never counted (knocks lost on the way, a mistyped passphrase), so
/// a later run may use them. A static sequence can be sent again. An
/// authenticator profile has the code of one 30-second step; which one is
/// not known, so its tries take the code as that of each accepted step in
/// turn.
pub fn knock(
    profile: &Profile,
    record: &mut KnockRecord,
    server: &Server,
    options: &Options,
    mut on_try: impl FnMut(&str),
) -> Result<Outcome> {
    let target = server.addr;
    let (slot_secs, totp) = match &profile.knock {
        Knock::Rotating { slot_secs, key, .. } => {
            (Some(*slot_secs), matches!(key, Key::Totp { .. }))
        }
        Knock::Static { .. } => (None, false),
        Knock::Spa { .. } => return knock_spa(profile, target, options, on_try),
    };
    let fleet = profile.is_fleet();
    let id = server.id.filter(|_| fleet);
    if fleet && id.is_none() {
        bail!("a fleet profile knocks a different sequence at every server: name the server");
    }
    let key = server.record_key();
    let started = Instant::now();
    let mut sent: Vec<u64> = Vec::new();
    let mut outcome = Outcome { tries: 0, elapsed: Duration::ZERO, port: None, exhausted: false };
    loop {
        let now = options
            .at
            .unwrap_or_else(SystemTime::now)
            .duration_since(UNIX_EPOCH)
            .map_err(|_| anyhow!("time before 1970"))?;
        let slot = match slot_secs {
            None => None,
            Some(slot_secs) => {
                let order = slot_order(now, slot_secs);
                let fresh: Vec<u64> =
                    order.into_iter().filter(|s| !record.sent_to(&key, *s)).collect();
                // A slot sent to another address may have gone to this very
                // server (its IPv4 and IPv6 addresses, say), where it would
                // be a replay: prefer one sent nowhere. Not for an
                // authenticator code, which fits one step only, nor for a
                // fleet profile, whose record knows the server, not just
                // the address, and whose other servers have sequences of
                // their own.
                let best = fresh
                    .iter()
                    .find(|s| totp || fleet || !record.sent_elsewhere(&key, **s))
                    .or(fresh.first());
                match best {
                    Some(&slot) => Some(slot),
                    None if outcome.tries > 0 => {
                        outcome.exhausted = true;
                        break;
                    }
                    None => bail!(
                        "every sequence {target} accepts now (slots {}) was sent from here already, and each opens the door once; the next one is accepted in {} s",
                        order.map(|s| s.to_string()).join(", "),
                        u64::from(slot_secs) - now.as_secs() % u64::from(slot_secs)
                    ),
                }
            }
        };
        let steps = profile.sequence_for_slot(slot.unwrap_or(0), id.as_ref())?;
        send(target, &steps, options.delay)?;
        outcome.tries += 1;
        if let (Some(slot), Some(slot_secs)) = (slot, slot_secs) {
            sent.push(slot);
            let live = now.as_secs() / u64::from(slot_secs);
            let real = unix_secs(SystemTime::now())? / u64::from(slot_secs);
            record.remember(&key, slot, live.min(real).saturating_sub(1));
        }
        let label = slot.map_or_else(|| "static".to_owned(), |s| format!("slot {s}"));
        let to = id.map_or_else(|| target.to_string(), |id| format!("{target} as {id}"));
        on_try(&format!("knocked {to}: {} ({label})", sequence_line(&steps)));
        let Some(port) = options.check else {
            break;
        };
        thread::sleep(SETTLE);
        let addr = SocketAddr::new(target, port);
        let state = probe::probe(addr, CHECK_TIMEOUT)?;
        outcome.port = Some((addr, state));
        if state != PortState::Filtered || outcome.tries > options.retries {
            break;
        }
    }
    if matches!(outcome.port, Some((_, PortState::Filtered))) {
        record.forget(&key, &sent);
    }
    outcome.elapsed = started.elapsed();
    Ok(outcome)
}

/// Sends single-packet authorizations to `target`: one datagram a try,
/// each with a fresh nonce and the time of sending (a datagram works once).
fn knock_spa(
    profile: &Profile,
    target: IpAddr,
    options: &Options,
    mut on_try: impl FnMut(&str),
) -> Result<Outcome> {
    let Knock::Spa { index, ports, .. } = &profile.knock else {
        bail!("not an SPA profile");
    };
    let key = profile.spa_key()?;
    let started = Instant::now();
    let mut outcome = Outcome { tries: 0, elapsed: Duration::ZERO, port: None, exhausted: false };
    loop {
        let unix = unix_secs(options.at.unwrap_or_else(SystemTime::now))?;
        let request = spa::Request {
            index: u16::try_from(*index).context("the profile's index does not fit a datagram")?,
            unix_secs: u32::try_from(unix).context("the time does not fit a datagram")?,
            nonce: crate::profile::random_bytes()?,
            admit: options.admit,
        };
        let datagram = spa::datagram(&key, &request, target);
        // Any port of the range: each one looks like every other.
        let [a, b] = crate::profile::random_bytes::<2>()?;
        let span = u32::from(ports.1 - ports.0) + 1;
        let port = ports.0 + (u32::from(u16::from_be_bytes([a, b])) % span) as u16;
        let bind: SocketAddr =
            if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("valid");
        let socket = UdpSocket::bind(bind).context("cannot open a UDP socket")?;
        let addr = SocketAddr::new(target, port);
        socket.send_to(&datagram, addr).with_context(|| format!("cannot send to {addr}"))?;
        outcome.tries += 1;
        let admit = options.admit.map_or_else(String::new, |a| format!(", admit {a}"));
        on_try(&format!("sent a single-packet authorization to {addr}{admit}"));
        let Some(check) = options.check else {
            break;
        };
        thread::sleep(SETTLE);
        let probe = SocketAddr::new(target, check);
        let state = probe::probe(probe, CHECK_TIMEOUT)?;
        outcome.port = Some((probe, state));
        if state != PortState::Filtered || outcome.tries > options.retries {
            break;
        }
    }
    outcome.elapsed = started.elapsed();
    Ok(outcome)
}

#[cfg(test)]
mod tests;
