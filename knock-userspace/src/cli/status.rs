//! `list`, `status` and `log`: what the daemon holds and did, as text for
//! people or as JSON.

use std::time::Duration;

use anyhow::Result;

use crate::{
    audit,
    control::{self, Changed, Listing, Request, Status},
    duration::format_duration,
    state::StateDir,
};

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct LogArgs {
    #[arg(long)]
    json: bool,
    /// Only this client's entries.
    #[arg(long, value_name = "NAME")]
    client: Option<String>,
    /// How many of the most recent entries.
    #[arg(short = 'n', long, default_value_t = 50)]
    lines: usize,
}

pub(super) fn list(state: &StateDir, args: ListArgs) -> Result<()> {
    let listing: Listing = control::request(state, &Request::List)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&listing)?);
    } else {
        print_listing(&listing);
    }
    Ok(())
}

pub(super) fn status(state: &StateDir, args: StatusArgs) -> Result<()> {
    let status: Status = control::request(state, &Request::Status)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_status(&status);
    }
    Ok(())
}

pub(super) fn log(state: &StateDir, args: LogArgs) -> Result<()> {
    audit::print(state, args.json, args.client.as_deref(), args.lines)
}

/// What the daemon answered a change with.
pub(super) fn print_changed(changed: Changed) {
    println!("{}", changed.message);
}

fn print_listing(listing: &Listing) {
    let protected: Vec<String> = listing.protected.iter().map(ToString::to_string).collect();
    let protected = if protected.is_empty() { "none".to_owned() } else { protected.join(" ") };
    println!("protected ports: {protected}");
    if !listing.permanent.is_empty() {
        let nets: Vec<String> = listing.permanent.iter().map(ToString::to_string).collect();
        println!("always allowed: {}", nets.join(" "));
    }
    if listing.allowed.is_empty() {
        println!("allowed sources: none");
    } else {
        println!("allowed sources:");
        for source in &listing.allowed {
            let left = format_duration(Duration::from_millis(source.expires_in_ms));
            println!("  {:<39} {:>9} left  ({})", source.addr.to_string(), left, source.origin);
        }
    }
    print_flows(listing);
}

fn print_flows(listing: &Listing) {
    if listing.flows.is_empty() {
        println!("open flows: none");
        return;
    }
    println!("open flows:");
    for flow in &listing.flows {
        let proto = flow.proto;
        let source = std::net::SocketAddr::new(flow.source, flow.source_port);
        let idle = format_duration(Duration::from_millis(flow.idle_ms));
        let closing = if flow.closing { "  closing" } else { "" };
        println!("  {:<46} -> {}/{proto}  idle {idle}{closing}", source.to_string(), flow.port);
    }
}

fn print_status(status: &Status) {
    println!(
        "daemon:     running (pid {}, up {})",
        status.pid,
        format_duration(Duration::from_secs(status.uptime_secs.max(1)))
    );
    if status.fail_open {
        println!("program:    id {} (nothing pinned)", status.program_id);
    } else {
        println!("program:    id {} (pins in {})", status.program_id, status.pin_dir);
    }
    let ifaces: Vec<String> = status
        .interfaces
        .iter()
        .map(|i| {
            format!(
                "{} ({})",
                i.name,
                serde_json::to_value(i.mode)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            )
        })
        .collect();
    println!("interfaces: {}", ifaces.join(", "));
    match &status.server_name {
        Some(name) => println!("server:     {name} (fleet clients' sequences derive from it)"),
        None => println!("server:     no valid name: fleet clients are skipped (set server_name)"),
    }
    if status.survives_kill {
        println!("if killed:  the program stays attached until 'knock-xdp detach' (fail closed)");
    } else if status.fail_open {
        println!("if killed:  protection ends with this daemon (fail open)");
    } else {
        println!("if killed:  protection ends with this daemon: its links are not pinned");
    }
    println!(
        "clients:    {} ({} sequences installed); allowed sources {}; open flows {}; knocks in progress {}",
        status.clients, status.sequences, status.allowed, status.flows, status.knocks_in_progress
    );
    if !status.broken_clients.is_empty() {
        println!(
            "broken:     {} (skipped: their sequences cannot be derived)",
            status.broken_clients.join(", ")
        );
    }
    if !status.current_slots.is_empty() {
        let slots: Vec<String> =
            status.current_slots.iter().map(|(c, s)| format!("{c} {s}")).collect();
        println!("slots now:  {}", slots.join(", "));
    }
    println!("counters:");
    for (name, value) in &status.counters {
        println!("  {name:<20} {value}");
    }
}
