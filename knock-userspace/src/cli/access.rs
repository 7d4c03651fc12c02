//! `protect`, `unprotect`, `allow` and `revoke`: which ports the door
//! guards and which sources pass it. What persists also works without a
//! daemon, straight in the state file (applied at the next start).

use std::time::Duration;

use anyhow::{Result, bail};
use tracing::warn;

use super::{
    offline::{ask_daemon, edit_state},
    status::print_changed,
};
use crate::{
    audit,
    clients::ClientStore,
    control::{self, Changed, Request},
    duration::parse_duration,
    footguns,
    nets::Cidr,
    ports::{self, PortSpec, ProtoPort},
    state::StateDir,
};

#[derive(Debug, clap::Args)]
pub struct ProtectArgs {
    #[arg(required = true, value_name = "PORT[/tcp|/udp]", value_parser = parse_port_spec)]
    ports: Vec<PortSpec>,
    /// Protect a port that lies in a client's knock ports anyway (logged
    /// and audited).
    #[arg(long)]
    force: bool,
}

#[derive(Debug, clap::Args)]
pub struct UnprotectArgs {
    #[arg(required = true, value_name = "PORT[/tcp|/udp]", value_parser = parse_port_spec)]
    ports: Vec<PortSpec>,
}

#[derive(Debug, clap::Args)]
pub struct AllowArgs {
    /// An IPv4 or IPv6 address; with --permanent also a network (10.0.0.0/8).
    #[arg(value_name = "ADDR|CIDR", value_parser = parse_target)]
    target: Cidr,
    /// How long (e.g. 30s, 10m, 2h).
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration, default_value = "1h", conflicts_with = "permanent")]
    duration: Duration,
    /// Admit without knocking until revoked; persisted across restarts.
    #[arg(long)]
    permanent: bool,
    /// Always allow a network wider than a /8 (IPv4) or /32 (IPv6)
    /// anyway (logged and audited).
    #[arg(long)]
    force: bool,
}

#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    #[arg(value_name = "ADDR|CIDR", value_parser = parse_target)]
    target: Cidr,
}

fn parse_port_spec(text: &str) -> Result<PortSpec, String> {
    text.parse()
}

fn parse_target(text: &str) -> Result<Cidr, String> {
    text.parse()
}

pub(super) fn protect(state: &StateDir, args: ProtectArgs) -> Result<()> {
    let ProtectArgs { ports, force } = args;
    let requested = ports::expand_all(&ports);
    // A broken client file is reported by the commands that need
    // the clients; it does not stand in the way of protecting.
    let clients = ClientStore::new(state).load().unwrap_or_else(|err| {
        warn!("cannot check the clients' knock ports: {err:#}");
        Vec::new()
    });
    let refusals = footguns::protect_refusals(&requested, &clients);
    footguns::force_or_refuse(state, force, &ports::join(&requested), None, &refusals)?;
    change_protected(state, &ports, true)
}

pub(super) fn unprotect(state: &StateDir, args: UnprotectArgs) -> Result<()> {
    change_protected(state, &args.ports, false)
}

pub(super) fn allow(state: &StateDir, args: AllowArgs) -> Result<()> {
    let AllowArgs { target, duration, permanent, force } = args;
    if let Some(why) = footguns::never_a_source(&target) {
        bail!("{why}");
    }
    if permanent {
        let refusals: Vec<String> = footguns::too_wide(&target).into_iter().collect();
        footguns::force_or_refuse(state, force, &target.to_string(), None, &refusals)?;
        return allow_network(state, target);
    }
    if !target.is_host() {
        bail!("a network can only be allowed --permanent ({target})");
    }
    let for_ms = duration.as_millis() as u64;
    print_changed(control::request(state, &Request::Allow { addr: target.addr(), for_ms })?);
    Ok(())
}

/// `allow CIDR --permanent`: through the daemon, or into the state file.
fn allow_network(state: &StateDir, net: Cidr) -> Result<()> {
    match ask_daemon(state, &Request::AllowNet { net })? {
        Some(changed) => print_changed(changed),
        None => {
            edit_state(state, |saved| {
                saved.allow_nets.insert(net);
            })?;
            println!(
                "{net} is always allowed (the daemon is not running: takes effect at the next 'knock-xdp attach')"
            );
        }
    }
    Ok(())
}

/// `revoke`: through the daemon; without it only a permanent network can be
/// removed (from the state file).
pub(super) fn revoke(state: &StateDir, args: RevokeArgs) -> Result<()> {
    let target = args.target;
    match ask_daemon(state, &Request::Revoke { target })? {
        Some(changed) => print_changed(changed),
        None => {
            if !state.path().exists() || !state.load()?.allow_nets.contains(&target) {
                // Reports that no daemon runs (or asks one that just started).
                return control::request::<Changed>(state, &Request::Revoke { target }).map(drop);
            }
            edit_state(state, |saved| {
                saved.allow_nets.remove(&target);
            })?;
            audit::append_or_warn(state, &audit::Record::now("revoked", target.to_string()));
            println!("{target} is no longer always allowed");
        }
    }
    Ok(())
}

/// protect/unprotect: through the daemon when it runs, else straight into
/// the state file (applied at the next start).
fn change_protected(state: &StateDir, specs: &[PortSpec], protect: bool) -> Result<()> {
    let requested = ports::expand_all(specs);
    let list: Vec<ProtoPort> = requested.iter().copied().collect();
    let request =
        if protect { Request::Protect { ports: list } } else { Request::Unprotect { ports: list } };
    match ask_daemon(state, &request)? {
        Some(changed) => print_changed(changed),
        None => {
            edit_state(state, |saved| {
                for port in &requested {
                    if protect {
                        saved.protected.insert(*port);
                    } else {
                        saved.protected.remove(port);
                    }
                }
            })?;
            let verb = if protect { "protected" } else { "unprotected" };
            println!(
                "{verb} {} (the daemon is not running: takes effect at the next 'knock-xdp attach')",
                ports::join(&requested)
            );
        }
    }
    Ok(())
}
