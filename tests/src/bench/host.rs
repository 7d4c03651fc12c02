//! The host side of the lab parts: commands in a namespace, process and
//! thread CPU time, frames as a veth end receives them, and probing a door.

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use knock_common::{Proto, proto::tcp_flags::SYN};
use serde_json::{Value, json};

use super::harness::tcp;
use crate::{frames::Frame, lab};

/// The machine the numbers come from.
pub fn machine() -> Value {
    let first_line = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_owned())
            .unwrap_or_default()
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_default();
    let nproc = thread::available_parallelism().map_or(0, |n| n.get());
    json!({
        "kernel": first_line("uname", &["-r"]),
        "cpu": cpu,
        "nproc": nproc,
        "iptables": first_line("iptables", &["-V"]),
        // Statistics on for everyone add two clock reads to every program run.
        "bpf_stats_enabled": first_line("cat", &["/proc/sys/kernel/bpf_stats_enabled"]),
    })
}

pub fn sh(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!("{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip netns exec NS program args...`
pub fn in_ns(ns: &str, program: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    sh("ip", &all)
}

pub fn proc_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .ok_or_else(|| anyhow!("no VmRSS"))?
        .parse()
        .map_err(Into::into)
}

/// utime + stime of the whole process, in seconds.
pub fn proc_cpu_s(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces).
    let rest = &stat[stat.rfind(')').ok_or_else(|| anyhow!("bad stat"))? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz)
}

/// CPU time of the calling thread, in ns (`CLOCK_THREAD_CPUTIME_ID`: the
/// scheduler's own account, not sampled by ticks).
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn mac_of(netns: &lab::Netns, iface: &str) -> Result<[u8; 6]> {
    let out = netns.ip(&["-j", "link", "show", "dev", iface]);
    let v: Value = serde_json::from_str(&out)?;
    let text = v[0]["address"].as_str().ok_or_else(|| anyhow!("no MAC for {iface}"))?;
    let mut mac = [0u8; 6];
    for (b, part) in mac.iter_mut().zip(text.split(':')) {
        *b = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}

/// The lab's two MACs, (server end, client end).
pub fn lab_macs(lab: &lab::Lab) -> Result<([u8; 6], [u8; 6])> {
    Ok((mac_of(&lab.server, &lab.server_if)?, mac_of(&lab.client, &lab.client_if)?))
}

/// Addresses `frame` (untagged, IPv4) from the client's MAC to the
/// server's and fixes its checksums, so the server's stack takes it as it
/// takes a real packet.
pub fn for_lab(mut frame: Vec<u8>, (server, client): ([u8; 6], [u8; 6])) -> Vec<u8> {
    frame[0..6].copy_from_slice(&server);
    frame[6..12].copy_from_slice(&client);
    fix_checksums(&mut frame);
    frame
}

/// A TCP SYN from the lab client to the lab server's port, as the server's
/// veth end receives it.
pub fn lab_syn(macs: ([u8; 6], [u8; 6]), port: u16) -> Vec<u8> {
    let frame = tcp(lab::CLIENT_V4.parse().unwrap(), lab::SERVER_V4.parse().unwrap(), port, SYN);
    for_lab(frame, macs)
}

/// A UDP datagram with `payload` from `src` to the lab server's `port`.
pub fn lab_udp(
    macs: ([u8; 6], [u8; 6]),
    src: IpAddr,
    port: u16,
    sport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let frame = Frame {
        udp_payload: payload.to_vec(),
        ..Frame::new(src, lab::SERVER_V4.parse().unwrap(), Proto::Udp, port)
    }
    .build_with_sport(sport);
    for_lab(frame, macs)
}

/// The IPv4 header checksum, and the TCP or UDP checksum, of an untagged
/// frame (`ip_rcv` drops bad IPv4 header checksums before any netfilter
/// hook; a bad transport checksum never reaches a socket).
pub fn fix_checksums(frame: &mut [u8]) {
    fn fold(mut sum: u32) -> u16 {
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }
    fn add(bytes: &[u8]) -> u32 {
        bytes
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum()
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    frame[24..26].fill(0);
    let ip = fold(add(&frame[14..14 + ihl]));
    frame[24..26].copy_from_slice(&ip.to_be_bytes());
    let l4 = 14 + ihl;
    // The checksum's offset in the TCP and in the UDP header.
    let at = l4 + if frame[23] == 17 { 6 } else { 16 };
    frame[at..at + 2].fill(0);
    let len = (frame.len() - l4) as u32;
    let pseudo = add(&frame[26..34]) + u32::from(frame[23]) + len;
    let sum = fold(pseudo + add(&frame[l4..]));
    frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
}

/// TCP segments the namespace's stack received (`/proc/net/snmp`, InSegs).
pub fn tcp_in_segs(ns: &str) -> Result<u64> {
    let snmp = in_ns(ns, "cat", &["/proc/net/snmp"])?;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap_or(""), tcp.next().unwrap_or(""));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "InSegs")
        .map(|(_, v)| v.parse::<u64>())
        .transpose()?
        .ok_or_else(|| anyhow!("no Tcp InSegs"))
}

/// A non-blocking IPv4 TCP socket bound to `source`, connecting to `target`.
fn connecting(source: IpAddr, target: SocketAddr) -> Result<OwnedFd> {
    let (IpAddr::V4(src), IpAddr::V4(dst)) = (source, target.ip()) else {
        bail!("IPv4 only");
    };
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0)
    };
    ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: we own fd from here on.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let sin = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(ip.octets()) },
        sin_zero: [0; 8],
    };
    let (s, d) = (sin(src, 0), sin(dst, target.port()));
    let len = size_of::<libc::sockaddr_in>() as u32;
    // SAFETY: valid fd and sockaddrs.
    unsafe {
        ensure!(
            libc::bind(fd, (&s as *const libc::sockaddr_in).cast(), len) == 0,
            "bind: {}",
            std::io::Error::last_os_error()
        );
        // EINPROGRESS: the SYN has been handed to the device.
        libc::connect(fd, (&d as *const libc::sockaddr_in).cast(), len);
    }
    Ok(owned)
}

/// One SYN from `source` to `target`: a non-blocking connect, then close.
pub fn send_syn(source: IpAddr, target: SocketAddr) -> Result<()> {
    connecting(source, target).map(drop)
}

/// One connection attempt that waits at most `wait` for the handshake.
pub fn connects(source: IpAddr, target: SocketAddr, wait: Duration) -> Result<bool> {
    let fd = connecting(source, target)?;
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut pfd, 1, wait.as_millis().max(1) as i32) };
    if ready <= 0 {
        return Ok(false);
    }
    let mut err: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as u32;
    // SAFETY: valid fd, and an int to write the pending error to.
    unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    Ok(err == 0)
}

/// How often [`open_after`] tries the door: a dropped SYN is retried by TCP
/// only after a second, so the probe gives up on each attempt after this
/// and starts another. It bounds the resolution of what it measures.
pub const PROBE_WAIT: Duration = Duration::from_millis(1);

/// Tries to connect from `source` to `target` every [`PROBE_WAIT`] until
/// one handshake completes; the time from `start` to then, or `None` when
/// the door stayed shut until `deadline` after `start`.
pub fn open_after(
    source: IpAddr,
    target: SocketAddr,
    start: Instant,
    deadline: Duration,
) -> Result<Option<Duration>> {
    while start.elapsed() < deadline {
        if connects(source, target, PROBE_WAIT)? {
            return Ok(Some(start.elapsed()));
        }
    }
    Ok(None)
}
