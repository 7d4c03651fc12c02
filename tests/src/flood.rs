//! Floods: crafted frames written straight onto an interface with an
//! AF_PACKET socket, in batches of `sendmmsg`, so a test can play a million
//! spoofed sources without a million sockets.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
};

use crate::{
    frames::{Frame, Proto},
    packet,
};

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
    let socket = packet::socket(iface)?;
    packet::set_option(&socket, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &1 as &libc::c_int)?;
    let mut sent = 0;
    let mut next = 0;
    while next < count {
        let n = (count - next).min(BATCH as u64);
        let mut frames: Vec<Vec<u8>> = (next..next + n).map(&mut frame).collect();
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
        sent += n;
        next += n;
    }
    Ok(sent)
}
