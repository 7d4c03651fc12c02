//! The kernel contract of knock-xdp, shared by the XDP program and its
//! userspace: map names and layouts, the decision, the knock state machine.
//!
//! Everything the program runs is `no_std` plain data and code, so the XDP
//! program, the daemon, the reference model and host tests all use the very
//! same definitions and rules. The data path reads top to bottom:
//! `decide` (the verdict) → `spa` (single-packet authorization, over
//! `sha256`), `knock` (knock spaces, the trie walk, failed-knock limits)
//! and `flow` (admitted connections), `filter` (the stranger's shortcut)
//! → the map layouts in `maps`,
//! `source`, `trie`, `allow` and `event`. Userspace-only parts (the
//! sequence builder, `aya::Pod` impls, serde and clap derives) sit behind
//! the `std` and `user` features.
#![no_std]

#[cfg(any(test, feature = "std"))]
extern crate std;

pub mod allow;
pub mod decide;
pub mod event;
pub mod filter;
pub mod flow;
pub mod knock;
pub mod limit;
pub mod maps;
#[cfg(any(test, feature = "model"))]
pub mod model;
#[cfg(feature = "user")]
mod pod;
pub mod proto;
#[cfg(feature = "sequence")]
pub mod secret;
#[cfg(feature = "sequence")]
pub mod sequence;
#[cfg(feature = "sequence")]
pub mod server_id;
pub mod sha256;
pub mod source;
pub mod spa;
pub mod trie;

pub use proto::{Proto, ProtoPort};
