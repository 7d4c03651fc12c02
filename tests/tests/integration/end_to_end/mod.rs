//! End to end: real TCP and UDP services in a server namespace, a real
//! daemon attached to the server's end of a veth pair, and real sockets in a
//! client namespace.
//!
//! `door`: protecting, allowing and revoking. `restarts`: what outlives a
//! detach, a kill or a restart. `interfaces`: several interfaces and
//! instances, and interfaces that come and go. `reload`: hand edits and the
//! config file, applied by `reload` and SIGHUP.

mod door;
mod interfaces;
mod reload;
mod restarts;
