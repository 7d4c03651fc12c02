//! Part 4: the real daemon's RSS and CPU, idle and while its interface
//! takes a flood of SYNs to the protected port.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow, ensure};
use knock_userspace::loader;
use serde_json::{Value, json};

use super::{
    Settings,
    harness::PROTECTED,
    host::{lab_macs, lab_syn, proc_cpu_s, proc_rss_kib},
};
use crate::lab::{Entry, Instance, Lab};

#[derive(Clone, Debug, Default)]
pub struct Footprint {
    pub pid: u32,
    pub rss_idle_kib: u64,
    pub rss_flood_kib: u64,
    pub cpu_idle_s: f64,
    pub cpu_flood_s: f64,
    pub window_s: f64,
    pub flood_frames_sent: u64,
    pub flood_pps_offered: f64,
    pub flood_dropped_counted: u64,
}

impl Footprint {
    pub fn table(&self, s: &mut String) {
        s.push_str(&format!(
            "\n4. daemon footprint (pid {}), {:.0} s windows\n",
            self.pid, self.window_s
        ));
        s.push_str(&format!(
            "idle:  RSS {} KiB, CPU {:.2} s\n",
            self.rss_idle_kib, self.cpu_idle_s
        ));
        s.push_str(&format!(
            "flood: RSS {} KiB, CPU {:.2} s; {} SYNs sent to the protected port ({:.0} pps offered from AF_PACKET), {} counted dropped by the program\n",
            self.rss_flood_kib,
            self.cpu_flood_s,
            self.flood_frames_sent,
            self.flood_pps_offered,
            self.flood_dropped_counted
        ));
    }

    pub fn json(&self) -> Value {
        json!({
            "pid": self.pid, "window_s": self.window_s,
            "rss_idle_kib": self.rss_idle_kib, "rss_flood_kib": self.rss_flood_kib,
            "cpu_idle_s": self.cpu_idle_s, "cpu_flood_s": self.cpu_flood_s,
            "flood_frames_sent": self.flood_frames_sent, "flood_pps_offered": self.flood_pps_offered,
            "flood_dropped_counted": self.flood_dropped_counted,
        })
    }
}

fn dropped_protected(status: &Value) -> u64 {
    let counters = &status["counters"];
    counters["dropped_protected"]
        .as_u64()
        .or_else(|| {
            counters.as_array().and_then(|a| {
                a.iter()
                    .find(|c| c["name"] == "dropped_protected")
                    .and_then(|c| c["value"].as_u64())
            })
        })
        .unwrap_or(0)
}

pub fn run(settings: &Settings) -> Result<Footprint> {
    let lab = Lab::new();
    let mut daemon = Instance::new(&lab.server, Entry::NsenterNet);
    daemon.attach(&[&lab.server_if]);
    daemon.ok(&["protect", &format!("{PROTECTED}/tcp")]);
    let status = daemon.status();
    let pid = status["pid"].as_u64().ok_or_else(|| anyhow!("status has no pid: {status}"))? as u32;
    let window = Duration::from_secs(settings.footprint_secs);
    // Let startup work settle.
    thread::sleep(Duration::from_millis(500));

    let cpu0 = proc_cpu_s(pid)?;
    thread::sleep(window);
    let cpu_idle = proc_cpu_s(pid)? - cpu0;
    let rss_idle = proc_rss_kib(pid)?;

    // The flood: SYNs to the protected port from an AF_PACKET socket on the
    // client's veth end, as fast as one thread can send.
    let frame = lab_syn(lab_macs(&lab)?, PROTECTED);
    let client_if = lab.client_if.clone();
    let dropped0 = dropped_protected(&daemon.status());
    let cpu0 = proc_cpu_s(pid)?;
    let start = Instant::now();
    let sent = lab.client.enter(move || flood(&client_if, &frame, window))?;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_flood = proc_cpu_s(pid)? - cpu0;
    let rss_flood = proc_rss_kib(pid)?;
    let dropped = dropped_protected(&daemon.status()) - dropped0;
    Ok(Footprint {
        pid,
        rss_idle_kib: rss_idle,
        rss_flood_kib: rss_flood,
        cpu_idle_s: cpu_idle,
        cpu_flood_s: cpu_flood,
        window_s: window.as_secs_f64(),
        flood_frames_sent: sent,
        flood_pps_offered: sent as f64 / elapsed,
        flood_dropped_counted: dropped,
    })
}

/// Sends `frame` on `iface` (AF_PACKET) for `duration`; returns frames sent.
fn flood(iface: &str, frame: &[u8], duration: Duration) -> Result<u64> {
    let ifindex = loader::if_index(iface)?;
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    ensure!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
    // SAFETY: we own fd; File closes it.
    let _guard = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: zeroed sockaddr_ll is valid; fields set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&frame[..6]);
    let deadline = Instant::now() + duration;
    let mut sent = 0u64;
    while Instant::now() < deadline {
        for _ in 0..1024 {
            // SAFETY: valid fd, buffer and sockaddr.
            let n = unsafe {
                libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if n > 0 {
                sent += 1;
            }
        }
    }
    Ok(sent)
}
