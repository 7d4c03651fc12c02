//! Network namespaces, the commands that build them, and what XDP program
//! an interface in one carries.

use std::{fs, os::fd::AsRawFd as _, process::Command, thread};

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
    pub(super) fn new(name: String) -> Self {
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

    /// Gives `iface` the addresses `cidrs` (IPv6 ones without duplicate
    /// address detection, so they work at once) and brings it up.
    pub(super) fn up(&self, iface: &str, cidrs: &[&str]) {
        for cidr in cidrs {
            let mut args = vec!["addr", "add", cidr, "dev", iface];
            if cidr.contains(':') {
                args.push("nodad");
            }
            self.ip(&args);
        }
        self.ip(&["link", "set", iface, "up"]);
    }

    /// Where `ip netns` keeps it: for [`move_thread_into`] on a thread of
    /// the caller's own.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `f` on a thread that has entered this namespace; sockets it
    /// creates stay in the namespace after the thread ends.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        thread::spawn(move || {
            move_thread_into(&path);
            f()
        })
        .join()
        .expect("thread in namespace panicked")
    }
}

/// Moves the calling thread into the network namespace at `path`
/// ([`Netns::path`]); the rest of the process stays where it is.
pub fn move_thread_into(path: &str) {
    let file = fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // SAFETY: a valid namespace fd; setns only affects this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also deletes the veth end inside it.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Is any XDP program attached to `iface` in `netns`?
pub fn has_xdp(netns: &Netns, iface: &str) -> bool {
    netns.ip(&["-d", "link", "show", "dev", iface]).contains("prog/xdp")
}
