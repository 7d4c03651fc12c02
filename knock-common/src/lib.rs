//! Types and logic shared by the knock-xdp XDP program and its userspace.
//!
//! Everything here is `no_std` plain data, so the XDP program, the daemon and
//! host tests all use the very same definitions. Userspace-only parts (the
//! `aya::Pod` impls) sit behind the `user` feature.
#![no_std]

pub mod knock;
pub mod maps;
#[cfg(any(test, feature = "model"))]
pub mod model;
#[cfg(feature = "sequence")]
pub mod secret;
#[cfg(feature = "sequence")]
pub mod sequence;
pub mod verdict;

pub use maps::{AllowEntry, Counter, SourceKey};
