//! Fault injection end to end: a state directory that turns read-only or
//! fills up under a running daemon, a bpffs that cannot be mounted, and a
//! daemon killed after every map write of a rotation, or with its tables
//! left half written. Each must give one clear message, keep protection in
//! force and lose nothing.
//!
//! Covered elsewhere: kill -9 mid-knock and take-over (end_to_end/restarts.rs), an
//! interface deleted and re-created, a broken state or config file on
//! reload.

mod rotation;
mod state_dir;

use knock_tests::lab::{Lab, SERVER_V4};

/// A second service, which a refused `protect` tries to hide.
pub const SERVICE2: u16 = 8023;

/// The lab's echo service, and [`SERVICE2`].
pub fn lab_with_services() -> Lab {
    let lab = Lab::with_service();
    lab.tcp_echo(SERVER_V4, SERVICE2);
    lab
}
