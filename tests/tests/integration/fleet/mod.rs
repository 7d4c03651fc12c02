//! One client profile, many servers (docs/fleet.md).
//!
//! `servers`: two servers of a fleet, each a daemon of its own on its own
//! link with its own server_name, share one fleet client. A sequence seen
//! at one is refused at the other, while the client opens both with one
//! `knock A B` command. Without `fleet`, the same experiment shows the
//! replay the fleet derivation prevents. `deploy`: the systemd unit and the
//! Kubernetes manifest a fleet is run with.

mod deploy;
mod servers;
