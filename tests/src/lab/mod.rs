//! A throwaway lab: a server and a client network namespace joined by a veth
//! pair, real sockets in each, and a knock-xdp daemon in the server
//! namespace. Names are unique per process and lab, so tests run in parallel.
//!
//! One job a file: `setup` (the lab, services and daemon most tests start
//! from), `netns` (namespaces and the commands that build them),
//! `services` (echo services in the server namespace), `instance` (the
//! daemon and the commands run against it), `inspect` (what a test reads
//! back from it), `client` (knock-xdp in the client namespace), `traffic`
//! (sockets in the client namespace) over `sockets` (raw socket calls),
//! `host` (knock-xdp outside the lab), `time` (waiting, and knock slots),
//! `output` (what commands print).

mod client;
mod host;
mod inspect;
mod instance;
mod netns;
mod output;
mod services;
mod setup;
mod sockets;
mod time;
mod traffic;

use std::{
    fs,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

pub use client::{Knocked, knocked, parse_sequence, tcp_knocks};
pub use host::{ScratchDir, host_cli};
pub use inspect::program_loaded;
pub use instance::{Entry, Instance, binary, with_umask};
pub use netns::{Netns, has_xdp, move_thread_into, run};
pub use output::{error_line, field, refusal, text};
pub use setup::{SERVICE, UDP_SERVICE};
pub use time::{
    away_from_slot_boundary, eventually, eventually_within, middle_of_slot, rfc3339, slot_now,
};
pub use traffic::{TcpSession, UdpSession};

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

/// A number unique in this process, for the names of labs and instances.
fn next_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::SeqCst)
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
        let n = next_id();
        // Interface names are at most 15 bytes.
        let id = format!("{}x{n}", std::process::id() % 100_000);
        let server = Netns::new(format!("knock-srv-{id}"));
        let client = Netns::new(format!("knock-cli-{id}"));
        let (server_if, client_if) = (format!("kxs{id}"), format!("kxc{id}"));
        veth_pair((&server_if, &server), (&client_if, &client));
        let slots_dir = std::env::temp_dir().join(format!("knock-slots-{id}"));
        let _ = fs::remove_dir_all(&slots_dir);
        let lab = Self { id, server, client, server_if, client_if, slots_dir };
        lab.server.up(&lab.server_if, &[&format!("{SERVER_V4}/24"), &format!("{SERVER_V6}/64")]);
        lab.client.up(
            &lab.client_if,
            &[&format!("{CLIENT_V4}/24"), &format!("{CLIENT2_V4}/24"), &format!("{CLIENT_V6}/64")],
        );
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
        veth_pair((&link.server_if, &self.server), (&link.client_if, &self.client));
        self.server.up(&link.server_if, &[&format!("{SERVER_B_V4}/24")]);
        self.client.up(&link.client_if, &[&format!("{CLIENT_B_V4}/24")]);
        link
    }
}

/// Creates a veth pair and moves each end into its namespace; if that
/// fails, deletes the pair from the host.
fn veth_pair(a: (&str, &Netns), b: (&str, &Netns)) {
    run("ip", &["link", "add", a.0, "type", "veth", "peer", "name", b.0]);
    let moved = [a, b].iter().all(|(end, ns)| {
        Command::new("ip")
            .args(["link", "set", end, "netns", &ns.name])
            .status()
            .is_ok_and(|s| s.success())
    });
    if !moved {
        for (end, _) in [a, b] {
            let _ = Command::new("ip").args(["link", "del", end]).status();
        }
        panic!("cannot move the veth pair {} {} into the namespaces", a.0, b.0);
    }
}

/// The second veth pair of a lab (see [`Lab::second_link`]).
pub struct SecondLink {
    /// Its end in the server namespace.
    pub server_if: String,
    pub client_if: String,
}
