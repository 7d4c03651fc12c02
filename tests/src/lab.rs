//! A throwaway lab: a server and a client network namespace joined by a veth
//! pair, real sockets in each, and a knock-xdp daemon in the server
//! namespace. Names are unique per process and lab, so tests run in parallel.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use knock_userspace::check::{self, PortState};

pub const SERVER_V4: &str = "10.201.0.1";
pub const CLIENT_V4: &str = "10.201.0.2";
/// A second address on the client, to play a different source.
pub const CLIENT2_V4: &str = "10.201.0.3";
pub const SERVER_V6: &str = "fd00:201::1";
pub const CLIENT_V6: &str = "fd00:201::2";
/// The server's address on the second link ([`Lab::second_link`]), and the
/// client's there.
pub const SERVER_B_V4: &str = "10.201.1.1";
pub const CLIENT_B_V4: &str = "10.201.1.2";

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// Runs a command, panicking with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out =
        Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    fn new(name: String) -> Self {
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs `f` on a thread that has entered this namespace; sockets it
    /// creates stay in the namespace after the thread ends.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            let file = fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: a valid namespace fd; setns only affects this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in namespace panicked")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also deletes the veth end inside it.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Server and client namespaces joined by a veth pair.
pub struct Lab {
    pub id: String,
    pub server: Netns,
    pub client: Netns,
    /// The server's end of the veth pair (inside `server`).
    pub server_if: String,
    pub client_if: String,
    /// Where `knock` in the client namespace remembers the slots it used
    /// (`--slots-dir`): one per lab, so tests never share one or write to
    /// the home directory. Removed with the lab.
    pub slots_dir: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.slots_dir);
    }
}

impl Lab {
    #[expect(
        clippy::new_without_default,
        reason = "a lab creates namespaces; it is no default value"
    )]
    pub fn new() -> Self {
        let n = NEXT_LAB.fetch_add(1, Ordering::SeqCst);
        // Interface names are at most 15 bytes.
        let id = format!("{}x{n}", std::process::id() % 100_000);
        let server = Netns::new(format!("knock-srv-{id}"));
        let client = Netns::new(format!("knock-cli-{id}"));
        let server_if = format!("kxs{id}");
        let client_if = format!("kxc{id}");
        run("ip", &["link", "add", &server_if, "type", "veth", "peer", "name", &client_if]);
        // Move both ends at once; if that fails, delete the pair from the host.
        let moved =
            Command::new("ip").args(["link", "set", &server_if, "netns", &server.name]).status();
        let moved2 =
            Command::new("ip").args(["link", "set", &client_if, "netns", &client.name]).status();
        if !(moved.is_ok_and(|s| s.success()) && moved2.is_ok_and(|s| s.success())) {
            let _ = Command::new("ip").args(["link", "del", &server_if]).status();
            panic!("cannot move the veth pair into the namespaces");
        }
        let slots_dir = std::env::temp_dir().join(format!("knock-slots-{id}"));
        let _ = fs::remove_dir_all(&slots_dir);
        let lab = Self { id, server, client, server_if, client_if, slots_dir };
        lab.server.ip(&["addr", "add", &format!("{SERVER_V4}/24"), "dev", &lab.server_if]);
        lab.server.ip(&["addr", "add", &format!("{SERVER_V6}/64"), "dev", &lab.server_if, "nodad"]);
        lab.client.ip(&["addr", "add", &format!("{CLIENT_V4}/24"), "dev", &lab.client_if]);
        lab.client.ip(&["addr", "add", &format!("{CLIENT2_V4}/24"), "dev", &lab.client_if]);
        lab.client.ip(&["addr", "add", &format!("{CLIENT_V6}/64"), "dev", &lab.client_if, "nodad"]);
        lab.server.ip(&["link", "set", &lab.server_if, "up"]);
        lab.client.ip(&["link", "set", &lab.client_if, "up"]);
        lab
    }

    /// A second veth pair between the same namespaces, with [`SERVER_B_V4`]
    /// and [`CLIENT_B_V4`]: another server interface, for a second daemon
    /// (two servers of a fleet). Its ends go with the namespaces.
    pub fn second_link(&self) -> SecondLink {
        let link = SecondLink {
            server_if: format!("kxs{}b", self.id),
            client_if: format!("kxc{}b", self.id),
        };
        run(
            "ip",
            &["link", "add", &link.server_if, "type", "veth", "peer", "name", &link.client_if],
        );
        let moved = [(&link.server_if, &self.server), (&link.client_if, &self.client)].iter().all(
            |(end, ns)| {
                Command::new("ip")
                    .args(["link", "set", end, "netns", &ns.name])
                    .status()
                    .is_ok_and(|s| s.success())
            },
        );
        if !moved {
            let _ = Command::new("ip").args(["link", "del", &link.server_if]).status();
            let _ = Command::new("ip").args(["link", "del", &link.client_if]).status();
            panic!("cannot move the second veth pair into the namespaces");
        }
        self.server.ip(&["addr", "add", &format!("{SERVER_B_V4}/24"), "dev", &link.server_if]);
        self.client.ip(&["addr", "add", &format!("{CLIENT_B_V4}/24"), "dev", &link.client_if]);
        self.server.ip(&["link", "set", &link.server_if, "up"]);
        self.client.ip(&["link", "set", &link.client_if, "up"]);
        link
    }

    /// Probes a TCP port from the client namespace (2 s timeout).
    pub fn tcp_state(&self, server: &str, port: u16) -> PortState {
        let server = server.to_owned();
        self.client.enter(move || {
            check::check(&server, port, Duration::from_secs(2)).expect("probe failed").1
        })
    }

    /// Opens a TCP connection from `source` in the client namespace and
    /// exchanges a line with the echo service; true on success.
    pub fn tcp_exchange(&self, source: &str, server: &str, port: u16) -> bool {
        let source: IpAddr = source.parse().unwrap();
        let server: IpAddr = server.parse().unwrap();
        self.client.enter(move || {
            let Ok(mut stream) = connect_from(source, SocketAddr::new(server, port)) else {
                return false;
            };
            stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 5];
            stream.write_all(b"hello").is_ok()
                && stream.read_exact(&mut buf).is_ok()
                && &buf == b"hello"
        })
    }

    /// Sends a UDP datagram from the client namespace and waits for the echo.
    pub fn udp_exchange(&self, server: &str, port: u16) -> bool {
        let server: IpAddr = server.parse().unwrap();
        self.client.enter(move || {
            let bind: SocketAddr =
                if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().unwrap();
            let socket = UdpSocket::bind(bind).unwrap();
            socket.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
            // A few tries, so a lost datagram is not mistaken for a drop.
            (0..3).any(|_| {
                socket.send_to(b"ping", (server, port)).unwrap();
                let mut buf = [0u8; 16];
                matches!(socket.recv_from(&mut buf), Ok((4, _))) && &buf[..4] == b"ping"
            })
        })
    }

    /// A TCP echo service on `addr:port` in the server namespace.
    pub fn tcp_echo(&self, addr: &str, port: u16) {
        let addr = SocketAddr::new(addr.parse().unwrap(), port);
        let listener = self.server.enter(move || TcpListener::bind(addr).expect("bind tcp"));
        // Runs until the process ends; the namespace going away closes nothing
        // the test still needs.
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                thread::spawn(move || {
                    let mut stream = stream;
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = stream.read(&mut buf) {
                        if stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }

    /// A UDP echo service on `addr:port` in the server namespace.
    pub fn udp_echo(&self, addr: &str, port: u16) {
        let addr = SocketAddr::new(addr.parse().unwrap(), port);
        let socket = self.server.enter(move || UdpSocket::bind(addr).expect("bind udp"));
        thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, peer)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(&buf[..n], peer);
            }
        });
    }
}

/// The second veth pair of a lab (see [`Lab::second_link`]).
pub struct SecondLink {
    /// Its end in the server namespace.
    pub server_if: String,
    pub client_if: String,
}

/// An open TCP connection from the client namespace to an echo service.
pub struct TcpSession {
    stream: std::net::TcpStream,
}

impl TcpSession {
    /// The client's port: with the addresses, the flow's 4-tuple.
    pub fn local_port(&self) -> u16 {
        self.stream.local_addr().unwrap().port()
    }

    /// Ends the client's side of the connection: its FIN goes out.
    pub fn finish(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }

    /// Aborts the connection: with a zero linger time, closing the socket
    /// sends a RST (at the client's next sequence number, as the kernel
    /// keeps it) instead of a FIN.
    pub fn abort(self) {
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: a valid socket and a linger struct of the given size.
        let rc = unsafe {
            libc::setsockopt(
                self.stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
        drop(self.stream);
    }

    /// Sends a line and waits (1.5 s at most) for its echo.
    pub fn exchange(&mut self) -> bool {
        let mut buf = [0u8; 5];
        self.stream.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
        self.stream.write_all(b"hello").is_ok()
            && self.stream.read_exact(&mut buf).is_ok()
            && &buf == b"hello"
    }
}

/// A UDP socket in the client namespace talking to an echo service: one flow.
pub struct UdpSession {
    socket: UdpSocket,
    server: SocketAddr,
}

impl UdpSession {
    /// Sends a datagram and waits (1 s at most) for its echo.
    pub fn exchange(&self) -> bool {
        self.socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        self.socket.send_to(b"ping", self.server).unwrap();
        let mut buf = [0u8; 16];
        matches!(self.socket.recv_from(&mut buf), Ok((4, _))) && &buf[..4] == b"ping"
    }
}

impl Lab {
    /// Opens a TCP connection from `source`; `None` when it cannot connect.
    pub fn tcp_session(&self, source: &str, server: &str, port: u16) -> Option<TcpSession> {
        let source: IpAddr = source.parse().unwrap();
        let target = SocketAddr::new(server.parse().unwrap(), port);
        self.client
            .enter(move || connect_from(source, target).ok())
            .map(|stream| TcpSession { stream })
    }

    /// A UDP socket bound to `source` in the client namespace.
    pub fn udp_session(&self, source: &str, server: &str, port: u16) -> UdpSession {
        let source: IpAddr = source.parse().unwrap();
        let server = SocketAddr::new(server.parse().unwrap(), port);
        let socket =
            self.client.enter(move || UdpSocket::bind(SocketAddr::new(source, 0)).unwrap());
        UdpSession { socket, server }
    }
}

/// One knock: a port and whether it is UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Knock {
    pub port: u16,
    pub udp: bool,
}

/// Parses `knock-xdp sequence` output: `61001 62002:udp ...`.
pub fn parse_sequence(line: &str) -> Vec<Knock> {
    line.split_whitespace()
        .map(|word| match word.strip_suffix(":udp") {
            Some(port) => Knock { port: port.parse().unwrap(), udp: true },
            None => Knock { port: word.parse().unwrap(), udp: false },
        })
        .collect()
}

impl Lab {
    /// Sends knocks from `source` (an address of the client namespace):
    /// a SYN per TCP knock, a datagram per UDP knock, `gap` apart.
    pub fn send_knocks(&self, source: &str, server: &str, knocks: &[Knock], gap: Duration) {
        let source: IpAddr = source.parse().unwrap();
        let server: IpAddr = server.parse().unwrap();
        let knocks = knocks.to_vec();
        self.client.enter(move || {
            for knock in knocks {
                let target = SocketAddr::new(server, knock.port);
                if knock.udp {
                    let socket = UdpSocket::bind(SocketAddr::new(source, 0)).unwrap();
                    socket.send_to(b"knock", target).unwrap();
                } else {
                    syn_from(source, target);
                }
                thread::sleep(gap);
            }
        })
    }

    /// Sends one SYN from `source` to every port from 1 to 65535, in order.
    pub fn spray_syns(&self, source: &str, server: &str) {
        let source: IpAddr = source.parse().unwrap();
        let server: IpAddr = server.parse().unwrap();
        self.client.enter(move || {
            for port in 1..=u16::MAX {
                syn_from(source, SocketAddr::new(server, port));
            }
        })
    }

    /// Runs `knock-xdp ARGS` in the client namespace (commands that need no daemon).
    pub fn client_cli(&self, args: &[&str]) -> Output {
        self.client_cli_env(args, &[])
    }

    /// The same, with extra environment variables (which may replace
    /// `KNOCK_XDP_SLOTS_DIR`).
    pub fn client_cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.client.name])
            .arg(binary())
            .args(args)
            .env("KNOCK_XDP_SLOTS_DIR", &self.slots_dir)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("cannot run knock-xdp")
    }

    /// Runs a program in the client namespace.
    pub fn client_run(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.client.name, program])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
    }
}

impl Lab {
    /// The knocks of `profile` at `at` (now when `None`), as `knock-xdp
    /// sequence` prints them in the client namespace.
    pub fn sequence(&self, profile: &Path, at: Option<SystemTime>) -> Vec<Knock> {
        let mut args =
            vec!["sequence".to_owned(), "--profile".into(), profile.display().to_string()];
        if let Some(at) = at {
            args.push("--at".into());
            args.push(humantime::format_rfc3339_seconds(at).to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.client_cli(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        parse_sequence(&String::from_utf8_lossy(&out.stdout))
    }

    /// `knock-xdp knock SERVER_V4 --profile PROFILE EXTRA...` from the client namespace.
    pub fn knock(&self, profile: &Path, extra: &[&str]) -> Output {
        let profile = profile.display().to_string();
        let mut args = vec!["knock", SERVER_V4, "--profile", &profile];
        args.extend_from_slice(extra);
        self.client_cli(&args)
    }
}

impl Lab {
    /// A port of the default knock space (61000-65535) that none of the
    /// sequences of `profile` installed now (slots s-1 to s+2, of
    /// `slot_secs`) uses: a knock there is a miss, or resets a knock.
    pub fn unused_knock_port(&self, profile: &Path, slot_secs: u64) -> u16 {
        let slot = Duration::from_secs(slot_secs);
        let first = SystemTime::now() - slot;
        let installed: Vec<u16> = (0..4)
            .flat_map(|k| self.sequence(profile, Some(first + slot * k)))
            .map(|knock| knock.port)
            .collect();
        (61_000..).find(|p| !installed.contains(p)).unwrap()
    }
}

/// Waits, if needed, so that at least `needed` is left in the current slot.
pub fn away_from_slot_boundary(slot_secs: u64, needed: Duration) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into_slot =
        Duration::from_nanos((now.as_nanos() % (u128::from(slot_secs) * 1_000_000_000)) as u64);
    let left = Duration::from_secs(slot_secs) - into_slot;
    if left < needed {
        thread::sleep(left + Duration::from_millis(200));
    }
}

/// Sends one SYN: a non-blocking connect from `source`, abandoned at once
/// (closing a socket in SYN-SENT sends nothing more).
fn syn_from(source: IpAddr, target: SocketAddr) {
    let domain = if source.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0)
    };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: we own the fd; the stream closes it on drop.
    let stream = unsafe { <std::net::TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
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

fn connect_from(source: IpAddr, target: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    // std cannot bind before connect; a raw socket with libc can.
    let domain = if source.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: we own the fd from here on.
    let stream = unsafe { <std::net::TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
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

/// Makes `cmd` run with umask `mask`, whatever the test process has.
pub fn with_umask(cmd: &mut Command, mask: libc::mode_t) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: umask(2) is async-signal-safe and cannot fail.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(mask);
            Ok(())
        });
    }
}

/// The knock-xdp binary under test (built by `cargo xtask test`).
pub fn binary() -> PathBuf {
    let path = std::env::var_os("KNOCK_XDP_BIN").map(PathBuf::from).unwrap_or_else(|| {
        panic!("KNOCK_XDP_BIN is not set: run the tests with 'cargo xtask test'")
    });
    assert!(path.is_file(), "KNOCK_XDP_BIN={} does not exist", path.display());
    path
}

/// How the daemon (and the commands talking to it) enter the server namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// `ip netns exec`: a private /sys, hence a private bpffs, per process.
    /// Control commands must still reach the daemon. Pins there would die
    /// with the daemon, so it refuses to start fail-closed:
    /// [`Instance::attach`] adds `--fail-open`.
    NetnsExec,
    /// `nsenter --net`: only the network namespace; the host's bpffs, so a
    /// test can look at the pins.
    NsenterNet,
}

/// A state directory and the commands run against it; optionally a daemon.
pub struct Instance {
    pub state_dir: PathBuf,
    netns: String,
    entry: Entry,
    daemon: Option<Child>,
    log: PathBuf,
    /// Files next to the state directory (profiles, secrets), removed on drop.
    side_files: std::cell::RefCell<Vec<PathBuf>>,
    /// The umask its commands and daemon run with (the test's when `None`).
    umask: Option<libc::mode_t>,
}

impl Instance {
    pub fn new(netns: &Netns, entry: Entry) -> Self {
        let n = NEXT_LAB.fetch_add(1, Ordering::SeqCst);
        let state_dir = std::env::temp_dir().join(format!("knock-test-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&state_dir);
        let log = state_dir.with_extension("log");
        Self {
            state_dir,
            netns: netns.name.clone(),
            entry,
            daemon: None,
            log,
            side_files: Default::default(),
            umask: None,
        }
    }

    /// The command line of `knock-xdp ARGS` against this instance, to run
    /// with other stdio than [`Instance::cli`].
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = match self.entry {
            Entry::NetnsExec => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &self.netns]);
                c
            }
            Entry::NsenterNet => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{}", self.netns)).arg("--");
                c
            }
        };
        cmd.arg(binary()).arg("--state-dir").arg(&self.state_dir).args(args);
        cmd.env_remove("RUST_LOG").stdin(Stdio::null());
        if let Some(mask) = self.umask {
            with_umask(&mut cmd, mask);
        }
        cmd
    }

    /// Runs every later command and daemon with umask `mask` (say 0, to
    /// show that file modes are set, not left to the umask).
    pub fn set_umask(&mut self, mask: libc::mode_t) {
        self.umask = Some(mask);
    }

    /// Runs a knock-xdp command against this instance.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("cannot run knock-xdp")
    }

    /// Runs a command that must end within `limit` (a refused `attach`, say,
    /// that would otherwise run as a daemon); panics with its output if not.
    pub fn cli_within(&self, args: &[&str], limit: Duration) -> Output {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run knock-xdp");
        let deadline = Instant::now() + limit;
        while child.try_wait().expect("cannot wait for knock-xdp").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().expect("cannot wait for knock-xdp");
                panic!(
                    "knock-xdp {args:?} still ran after {limit:?}:\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("cannot wait for knock-xdp")
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "knock-xdp {args:?} failed ({}): {}\ndaemon log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.daemon_log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).expect("status is JSON")
    }

    /// `list --json`, parsed.
    pub fn list(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["list", "--json"])).expect("list is JSON")
    }

    /// Starts `knock-xdp attach` and waits until it answers `status`.
    /// Under `ip netns exec`, with `--fail-open` (see [`Entry::NetnsExec`]).
    pub fn attach(&mut self, args: &[&str]) {
        self.attach_env(args, &[]);
    }

    /// The same, with extra environment variables for the daemon.
    pub fn attach_env(&mut self, args: &[&str], env: &[(&str, &str)]) {
        assert!(self.daemon.is_none(), "daemon already started");
        fs::create_dir_all(self.state_dir.parent().unwrap()).unwrap();
        let log = fs::File::create(&self.log).unwrap();
        let mut all = vec!["attach"];
        all.extend_from_slice(args);
        if self.entry == Entry::NetnsExec && !args.contains(&"--fail-open") {
            all.push("--fail-open");
        }
        let child = self
            .command(&all)
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start the daemon");
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.cli(&["status"]).status.success() {
                return;
            }
            if let Some(status) = self.daemon.as_mut().unwrap().try_wait().unwrap() {
                panic!("the daemon exited ({status}):\n{}", self.daemon_log());
            }
            assert!(
                Instant::now() < deadline,
                "the daemon never became ready:\n{}",
                self.daemon_log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn daemon_log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the daemon process to exit (after `detach`); its exit status.
    pub fn wait_daemon(&mut self) -> std::process::ExitStatus {
        let mut child = self.daemon.take().expect("no daemon");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the daemon did not exit:\n{}", self.daemon_log());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `limit` for the daemon to end on its own: its exit
    /// status, or `None` while it runs on.
    pub fn daemon_exit_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = self.daemon.as_mut().expect("no daemon");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.daemon = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the daemon: no cleanup of its own.
    pub fn kill_daemon(&mut self) {
        let mut child = self.daemon.take().expect("no daemon");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// A path next to the state directory, for a file the test writes or
    /// has written (a profile, a PIN); removed with the instance.
    pub fn side_file(&self, name: &str) -> PathBuf {
        let path = self.state_dir.with_extension(name);
        let _ = fs::remove_file(&path);
        self.side_files.borrow_mut().push(path.clone());
        path
    }

    /// `client add NAME ARGS --profile-out FILE`; returns the profile's path.
    pub fn add_client(&self, name: &str, args: &[&str]) -> PathBuf {
        let path = self.side_file(&format!("{name}.knock"));
        let mut all = vec!["client", "add", name];
        all.extend_from_slice(args);
        let path_arg = path.to_str().unwrap().to_owned();
        all.extend_from_slice(&["--profile-out", &path_arg]);
        self.ok(&all);
        path
    }

    /// Where this instance pins (valid for `Entry::NsenterNet`).
    pub fn pin_dir(&self) -> PathBuf {
        let state = knock_userspace::state::StateDir::new(&self.state_dir);
        knock_userspace::loader::pin_dir(&state).unwrap()
    }

    pub fn state_path(&self) -> &Path {
        &self.state_dir
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            // SIGTERM first: a clean detach removes the pins.
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.state_dir.exists() {
            // Whatever a killed daemon left pinned goes too.
            let _ = self.command(&["detach"]).output();
        }
        let _ = fs::remove_dir_all(&self.state_dir);
        let _ = fs::remove_file(&self.log);
        for file in self.side_files.borrow().iter() {
            let _ = fs::remove_file(file);
        }
    }
}

/// One string field of every object in a JSON array: `field(&list["allowed"], "addr")`.
pub fn field<'a>(array: &'a serde_json::Value, name: &str) -> Vec<&'a str> {
    array
        .as_array()
        .expect("an array")
        .iter()
        .map(|item| item[name].as_str().expect("a string"))
        .collect()
}

/// Is any XDP program attached to `iface` in `netns`?
pub fn has_xdp(netns: &Netns, iface: &str) -> bool {
    netns.ip(&["-d", "link", "show", "dev", iface]).contains("prog/xdp")
}

/// Waits (3 s at most) until `done` holds: the kernel frees programs and
/// links after an RCU grace period, not at the moment their last user goes.
pub fn eventually(what: &str, done: impl Fn() -> bool) {
    eventually_within(what, Duration::from_secs(3), done);
}

/// Waits until `done` holds, for `limit` at most (then panics with `what`):
/// for what a daemon does on a timer of its own.
pub fn eventually_within(what: &str, limit: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} (waited {limit:?})");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Is a BPF program with this id still loaded anywhere?
pub fn program_loaded(id: u32) -> bool {
    aya::programs::loaded_programs().any(|p| p.is_ok_and(|p| p.id() == id))
}
