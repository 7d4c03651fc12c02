//! Floods: crafted frames written straight onto an interface with an
//! AF_PACKET socket, in batches of `sendmmsg`, so a test can play a million
//! spoofed sources without a million sockets.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Instant,
};

use knock_common::Proto;

use crate::{frames::Frame, packet};

/// Sets its flag when dropped, also when a test panics or returns early:
/// a flood that waits for the flag never outlives its test.
pub struct StopOnDrop(pub Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Frames handed to the kernel per `sendmmsg` call.
const BATCH: usize = 256;

/// The `i`-th of a set of distinct spoofed sources: IPv4 from 10.128.0.0/9
/// (8 million addresses), IPv6 from fd00:bad::/64.
pub fn spoofed_source(i: u64, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(0xfd00_0bad_u128 << 96 | u128::from(i)))
    } else {
        assert!(i < 1 << 23, "only 8 million distinct IPv4 sources");
        IpAddr::V4(Ipv4Addr::from(0x0a80_0000 | i as u32))
    }
}

/// A TCP SYN from `src` to `dst:port`, from a source port derived from `i`.
pub fn syn(src: IpAddr, dst: IpAddr, port: u16, i: u64) -> Vec<u8> {
    Frame::new(src, dst, Proto::Tcp, port).build_with_sport(1024 + (i % 60_000) as u16)
}

/// Writes `count` frames onto `iface` (an interface of the calling thread's
/// network namespace); `frame(i)` builds the `i`-th. Returns how many the
/// kernel accepted. The frames skip the qdisc: a flood should measure the
/// receiver, not queueing on the sender.
pub fn send(iface: &str, count: u64, mut frame: impl FnMut(u64) -> Vec<u8>) -> io::Result<u64> {
    let socket = open(iface)?;
    let mut next = 0;
    while next < count {
        let n = (count - next).min(BATCH as u64);
        send_batch(&socket, (next..next + n).map(&mut frame).collect())?;
        next += n;
    }
    Ok(next)
}

/// What a flood sent, and when, as its own thread saw it: so a test can
/// prove from timestamps that something happened while it ran.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    pub frames: u64,
    /// Just before the first frame was handed to the kernel.
    pub first: Instant,
    /// Just after the last frame was handed to the kernel.
    pub last: Instant,
}

/// Writes frames as [`send`] does until at least `at_least` are sent and
/// `done()` has held, then one more batch, so the last frame leaves after
/// `done()` turned true. `progress` counts the frames sent so far, for other
/// threads to wait on.
pub fn send_until(
    iface: &str,
    at_least: u64,
    done: impl Fn() -> bool,
    progress: &AtomicU64,
    mut frame: impl FnMut(u64) -> Vec<u8>,
) -> io::Result<Sent> {
    let socket = open(iface)?;
    let first = Instant::now();
    let mut next = 0;
    let mut finishing = false;
    loop {
        send_batch(&socket, (next..next + BATCH as u64).map(&mut frame).collect())?;
        next += BATCH as u64;
        progress.store(next, Ordering::SeqCst);
        if finishing {
            return Ok(Sent { frames: next, first, last: Instant::now() });
        }
        finishing = next >= at_least && done();
    }
}

/// An AF_PACKET socket on `iface` whose frames skip the qdisc.
fn open(iface: &str) -> io::Result<OwnedFd> {
    let socket = packet::socket(iface)?;
    packet::set_option(&socket, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &1 as &libc::c_int)?;
    Ok(socket)
}

/// Hands `frames` to the kernel with `sendmmsg`, waiting while the device
/// queue is full.
fn send_batch(socket: &OwnedFd, mut frames: Vec<Vec<u8>>) -> io::Result<()> {
    let mut iovecs: Vec<libc::iovec> = frames
        .iter_mut()
        .map(|f| libc::iovec { iov_base: f.as_mut_ptr().cast(), iov_len: f.len() })
        .collect();
    // SAFETY: all-zero is a valid mmsghdr (no name, no control data).
    let mut headers: Vec<libc::mmsghdr> =
        iovecs.iter_mut().map(|_| unsafe { std::mem::zeroed() }).collect();
    for (header, iovec) in headers.iter_mut().zip(&mut iovecs) {
        header.msg_hdr.msg_iov = iovec;
        header.msg_hdr.msg_iovlen = 1;
    }
    let mut done = 0;
    while done < headers.len() {
        // SAFETY: the headers point at iovecs and frames that outlive the call.
        let rc = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                headers[done..].as_mut_ptr(),
                (headers.len() - done) as u32,
                0,
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            // The device queue is full: let the receiver catch up.
            if err.raw_os_error() == Some(libc::ENOBUFS) {
                std::thread::yield_now();
                continue;
            }
            return Err(err);
        }
        done += rc as usize;
    }
    Ok(())
}
