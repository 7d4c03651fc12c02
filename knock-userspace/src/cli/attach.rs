//! `attach`, `detach` and `reload`: starting the daemon, stopping it (or
//! cleaning up after one that was killed), and making it re-read its files.

use std::{path::Path, time::Duration};

use anyhow::{Result, bail};
use knock_common::server_id::ServerId;
use tracing::warn;

use super::{
    offline::{ask_daemon, lock_state},
    parse_server_name,
    status::print_changed,
};
use crate::{
    config::{self, Config, FailedKnocks},
    control::{self, Changed, Request},
    daemon::{self, AttachOptions},
    duration::parse_duration,
    footguns, loader,
    state::StateDir,
};

#[derive(Debug, clap::Args)]
pub struct AttachArgs {
    /// Interfaces to attach to (default: `interfaces` of the config file).
    #[arg(value_name = "IFACE")]
    ifaces: Vec<String>,
    /// XDP mode: auto tries native (driver) XDP, then falls back to skb (generic).
    #[arg(long, value_enum, env = "KNOCK_XDP_MODE")]
    mode: Option<Mode>,
    /// How long a source that knocked may open new connections (default 30s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "KNOCK_XDP_OPEN_WINDOW")]
    open_window: Option<Duration>,
    /// How long a whole knock sequence may take (default 10s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "KNOCK_XDP_KNOCK_TIMEOUT")]
    knock_timeout: Option<Duration>,
    /// How long an admitted connection lives without a packet from its client (default 15m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "KNOCK_XDP_IDLE_TIMEOUT")]
    idle_timeout: Option<Duration>,
    /// Let protection end with the daemon, even if it is killed: the
    /// ports are then exposed rather than locked. By default (fail
    /// closed) the program stays attached until 'knock-xdp detach'.
    #[arg(long)]
    fail_open: bool,
    /// Failed knocks a source address (an IPv6 /64) may make: a burst,
    /// then one per interval (default 32/1m); `off` lifts the limit.
    #[arg(long, value_name = "BURST/INTERVAL", env = "KNOCK_XDP_FAILED_KNOCKS")]
    failed_knocks: Option<FailedKnocks>,
    /// Serve Prometheus metrics on ADDR (e.g. 127.0.0.1:9419); off by default.
    #[arg(long, value_name = "ADDR", env = "KNOCK_XDP_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Allow --metrics-listen on an address that is not loopback, where
    /// anyone who reaches it can read the metrics.
    #[arg(long, env = "KNOCK_XDP_METRICS_PUBLIC")]
    metrics_public: bool,
    /// Accept an always-allowed network wider than a /8 (IPv4) or /32
    /// (IPv6) in the config file, here and on every reload; logged and
    /// audited.
    #[arg(long)]
    force: bool,
    /// This server's name, from which fleet clients' sequences derive
    /// (default: `server_name` of the config file, else the host name).
    /// Changes take effect at the next start.
    #[arg(long, value_name = "NAME", value_parser = parse_server_name, env = "KNOCK_XDP_SERVER_NAME")]
    server_name: Option<ServerId>,
}

/// `--mode`: the loader's [`loader::Mode`], as the command line spells it.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Mode {
    Auto,
    Native,
    Skb,
}

impl From<Mode> for loader::Mode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Auto => loader::Mode::Auto,
            Mode::Native => loader::Mode::Native,
            Mode::Skb => loader::Mode::Skb,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct DetachArgs {
    /// Only this interface (default: all).
    iface: Option<String>,
}

/// Runs the daemon in the foreground until it is told to stop.
pub(super) fn attach(state: StateDir, config: Option<&Path>, args: AttachArgs) -> Result<()> {
    let AttachArgs {
        ifaces,
        mode,
        open_window,
        knock_timeout,
        idle_timeout,
        fail_open,
        failed_knocks,
        metrics_listen,
        metrics_public,
        force,
        server_name,
    } = args;
    // Flags and KNOCK_XDP_* variables win over the file, the file over the defaults.
    let config = Config::load(config)?;
    let refusals = footguns::config_refusals(&config)?;
    let ifaces = if ifaces.is_empty() { config.interfaces.clone() } else { ifaces };
    if ifaces.is_empty() {
        bail!("no interface to attach to: name one, or set `interfaces` in {}", config.describe());
    }
    let metrics_listen = metrics_listen.or(config.metrics_listen);
    if let Some(addr) = metrics_listen
        && !addr.ip().to_canonical().is_loopback()
        && !(metrics_public || config.metrics_public)
    {
        bail!(
            "--metrics-listen {addr} is not a loopback address, so anyone who reaches it \
             could read the metrics; add --metrics-public (or metrics_public = true in \
             the config file) to serve them there"
        );
    }
    footguns::force_or_refuse(&state, force, &config.describe(), None, &refusals)?;
    let options = AttachOptions {
        ifaces,
        mode: mode.map(Into::into).or(config.mode).unwrap_or(loader::Mode::Auto),
        open_window: open_window.or(config.open_window).unwrap_or(Duration::from_secs(30)),
        knock_timeout: knock_timeout.or(config.knock_timeout).unwrap_or(Duration::from_secs(10)),
        idle_timeout: idle_timeout.or(config.idle_timeout).unwrap_or(Duration::from_secs(15 * 60)),
        fail_open: fail_open || config.fail_open,
        failed_knocks: failed_knocks.or(config.failed_knocks).unwrap_or(daemon::FAILED_KNOCKS),
        spa_skew: config.spa_skew.unwrap_or(daemon::SPA_SKEW),
        metrics_listen,
        force,
        server_name: match server_name.or(config.server_name) {
            Some(name) => Ok(name),
            None => config::host_name_identity(),
        },
    };
    daemon::run(state, options, config)
}

/// Through the daemon when it runs; otherwise removes what a killed daemon
/// left pinned (which detaches its program).
pub(super) fn detach(state: &StateDir, args: DetachArgs) -> Result<()> {
    let iface = args.iface;
    if let Some(changed) = ask_daemon::<Changed>(state, &Request::Detach { iface: iface.clone() })?
    {
        if changed.stopping {
            // The daemon removes its pins as it exits; wait for that.
            wait_until_stopped(state)?;
        }
        println!("{}", changed.message);
        return Ok(());
    }
    let _lock = lock_state(state)?;
    loader::ensure_bpffs()?;
    let pin_dir = loader::pin_dir(state)?;
    // One interface: only its link goes, unless it was the last one.
    if let Some(iface) = &iface {
        if !loader::remove_link(&pin_dir, iface)? {
            bail!(
                "knock-xdp is not attached to {iface} (state directory {})",
                state.path().display()
            );
        }
        if loader::pinned_link_exists(&pin_dir) {
            println!("detached from {iface} (left behind by a daemon that did not stop cleanly)");
            return Ok(());
        }
    }
    // Held open across the removal, so that no knock completes after its
    // records are read.
    let used = crate::used::open_pinned(&pin_dir);
    let detached: Vec<String> = iface.into_iter().chain(loader::remove_pins(&pin_dir)?).collect();
    if let Err(err) = used.and_then(|used| match used {
        Some(used) => crate::used::save_pinned(state, &used),
        None => Ok(()),
    }) {
        warn!("the used sequences are not kept for the next start: {err:#}");
    }
    if detached.is_empty() {
        println!("knock-xdp was not attached; nothing to detach");
    } else {
        println!(
            "detached from {} (left behind by a daemon that did not stop cleanly)",
            detached.join(" ")
        );
    }
    Ok(())
}

/// Waits until a daemon that was asked to stop has released its lock, i.e.
/// has finished detaching and removing its pins.
fn wait_until_stopped(state: &StateDir) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if state.try_lock()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("the daemon did not stop within 10s; see its log")
}

/// `reload`: the daemon re-reads its state file and clients (as on SIGHUP).
pub(super) fn reload(state: &StateDir) -> Result<()> {
    print_changed(control::request(state, &Request::Reload)?);
    Ok(())
}
