//! knock-xdp's userspace: the loader, the daemon and the command line.
//!
//! Data flows one way: `cli` → `daemon` / `control` / `check` → `loader`,
//! `maps` → `knock_common`.

pub mod admit_filter;
pub mod audit;
pub mod cli;
pub mod clients;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod duration;
pub mod footguns;
pub mod loader;
pub mod maps;
pub mod nets;
pub mod ports;
pub mod probe;
pub mod procnet;
pub mod profile;
pub mod prompt;
pub mod qr;
pub mod sender;
pub mod state;
pub mod used;
