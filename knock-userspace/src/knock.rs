//! The knock client: sends a profile's current sequence to a host.

use std::{
    net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs as _, UdpSocket},
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow};

use crate::{
    ports::{Proto, ProtoPort},
    profile::{Profile, knock_syntax},
};

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

/// The knocks a profile makes at `at` (now when `None`), with the slot.
pub fn steps_at(
    profile: &Profile,
    at: Option<SystemTime>,
) -> Result<(Option<u64>, Vec<ProtoPort>)> {
    let unix = unix_secs(at.unwrap_or_else(SystemTime::now))?;
    Ok((profile.slot_at(unix), profile.sequence_at(unix)?))
}
