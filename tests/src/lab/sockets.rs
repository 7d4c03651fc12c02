//! Sockets bound to a chosen source address before they connect, which std
//! cannot do: a bare SYN, and a connection with a timeout.

use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    os::fd::FromRawFd as _,
};

/// Sends one SYN: a non-blocking connect from `source`, abandoned at once
/// (closing a socket in SYN-SENT sends nothing more).
pub(super) fn syn_from(source: IpAddr, target: SocketAddr) {
    let domain = if source.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0)
    };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: we own the fd; the stream closes it on drop.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let (src, src_len) = sockaddr(SocketAddr::new(source, 0));
    let (dst, dst_len) = sockaddr(target);
    // SAFETY: valid fd and sockaddrs of the given lengths.
    unsafe {
        assert_eq!(
            libc::bind(fd, &src as *const _ as *const libc::sockaddr, src_len),
            0,
            "bind {source}"
        );
        libc::connect(fd, &dst as *const _ as *const libc::sockaddr, dst_len);
    }
    drop(stream);
}

/// A TCP connection from `source` to `target`, or the error (a timeout
/// after 2 s) that kept it from being made.
pub(super) fn connect_from(source: IpAddr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let domain = if source.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: we own the fd from here on.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let (src, src_len) = sockaddr(SocketAddr::new(source, 0));
    // SAFETY: valid fd and sockaddr of the given length.
    if unsafe { libc::bind(fd, &src as *const _ as *const libc::sockaddr, src_len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Connect with a timeout: non-blocking connect, then poll.
    // SAFETY: valid fd.
    unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) };
    let (dst, dst_len) = sockaddr(target);
    // SAFETY: valid fd and sockaddr.
    let rc = unsafe { libc::connect(fd, &dst as *const _ as *const libc::sockaddr, dst_len) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
        }
        let mut pfd = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, 2000) };
        if ready <= 0 {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        if let Some(err) = stream.take_error()? {
            return Err(err);
        }
    }
    stream.set_nonblocking(false)?;
    Ok(stream)
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}
