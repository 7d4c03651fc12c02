//! The long-running daemon: owns the loaded program and its maps, answers
//! control requests and sweeps expired allow entries.
//!
//! It runs on one thread: every task (control, sweep, signals) is a branch of
//! one `select!`, so map updates never race each other.

mod control;
mod events;
mod metrics;
mod options;
mod reload;
mod rotate;
mod sweep;

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::PermissionsExt as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::maps::{MapData, RingBuf};
use knock_common::maps::{MAP_EVENTS, Runtime};
use tokio::{
    net::UnixListener,
    signal::unix::{SignalKind, signal},
};
use tracing::{info, warn};

pub(crate) use options::settings;
pub use options::{
    AttachOptions, FAILED_KNOCKS, GLOBAL_MISS_BURST, GLOBAL_MISS_RATE_PER_SEC, SPA_SKEW,
};

use crate::{
    audit,
    clients::{Client, ClientStore},
    config::Config,
    loader::{self, Program},
    maps::{self, KernelMaps},
    nets::Cidr,
    ports::{self, Proto, ProtoPort},
    procnet,
    state::{State, StateDir},
};

/// How often expired allow entries are removed. The kernel checks deadlines
/// itself, so this only bounds how long a dead entry occupies a slot.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How often the installed sequences are checked against the clock. The
/// next slot's sequence is always installed a slot ahead, so this only has
/// to run well within one slot.
const ROTATE_INTERVAL: Duration = Duration::from_secs(1);

/// How often the event ring buffer is read. The program writes events
/// without waking the reader: a wakeup costs the packet that triggers it
/// about 5 µs, which knocks (and attackers) could otherwise make every
/// packet pay.
const EVENT_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Events read per poll at most: more than the ring buffer holds.
const EVENTS_PER_POLL: usize = 8192;

/// How often dead flows are removed (the kernel already ignores them).
const FLOW_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Everything the daemon's tasks share.
pub(crate) struct Daemon {
    state_dir: StateDir,
    options: AttachOptions,
    /// The config file's settings; its ports and networks add to the state's.
    config: Config,
    state: State,
    clients: Vec<Client>,
    installed: rotate::Installed,
    /// Where an attempt may be a knock (from the clients; see `rotate`).
    knock_space: BTreeSet<ProtoPort>,
    program: Program,
    maps: KernelMaps,
    started: Instant,
    /// Knock outcomes seen in events, for the metrics.
    knock_outcomes: std::collections::BTreeMap<&'static str, u64>,
    /// How many refusals may still be logged this second.
    refusals: events::RefusalBudget,
    /// The metrics server, when `--metrics-listen` is set.
    metrics: Option<metrics::MetricsServer>,
    /// Set by a `detach` that leaves no interface: the loop ends after replying.
    stop: bool,
    /// Slots the admission filter had set after its last rebuild.
    filter_live: usize,
}

/// Loads, attaches and serves until SIGINT/SIGTERM or `detach`; then detaches
/// cleanly. Every check that can fail on user input runs before anything is
/// loaded, so a refused start changes nothing.
pub fn run(state_dir: StateDir, options: AttachOptions, config: Config) -> Result<()> {
    let abort_after_write = test_abort_after_write()?;
    for iface in &options.ifaces {
        loader::attachable_if_index(iface)?;
    }
    state_dir.create()?;
    let Some(_lock) = state_dir.try_lock()? else {
        bail!(
            "a knock-xdp daemon is already running for state directory {}",
            state_dir.path().display()
        );
    };
    let state = state_dir.load()?;
    let clients = ClientStore::new(&state_dir).load()?;
    // Fail-closed needs pins that outlive the process; refuse rather than
    // promise it where they cannot (before mounting anything).
    if !options.fail_open
        && let Some(why) = loader::private_bpffs()?
    {
        bail!("{why}");
    }
    loader::ensure_bpffs()?;
    let pin_dir = loader::pin_dir(&state_dir)?;
    // An earlier run that did not stop cleanly left its program attached:
    // take it over rather than tear it down, so nothing is exposed.
    let adopting = pin_dir.exists() && !options.fail_open;
    let mut program = Program::load(pin_dir.clone(), options.fail_open, &config.limits)?;

    let started = (|| -> Result<(Daemon, RingBuf<MapData>)> {
        let mut maps = KernelMaps::take(&mut program.ebpf)?;
        let events = program
            .ebpf
            .take_map(MAP_EVENTS)
            .ok_or_else(|| anyhow!("the XDP object has no map named {MAP_EVENTS}"))?;
        let events = RingBuf::try_from(events)?;
        maps.set_settings(settings(&options))?;
        if !adopting {
            // New maps remember no SPA nonce: refuse datagrams sent before.
            maps.set_runtime(Runtime::SpaNotBefore, rotate::unix_ns() / 1_000_000_000)?;
        }
        // Connections already established to protected ports keep working:
        // they are followed before the ports are protected.
        let protected: BTreeSet<ProtoPort> =
            state.protected.union(&config.protected).copied().collect();
        let nets: BTreeSet<Cidr> = state.allow_nets.union(&config.allow).copied().collect();
        keep_established(&mut maps, &protected)?;
        // Ports are protected and sequences installed before the first packet.
        // Adopted maps already hold an earlier run's settings: start from those.
        maps.set_protected(&maps.protected()?, &protected)?;
        maps.set_allowed_nets(&maps.allowed_nets()?, &nets)?;
        let installed = rotate::Installed::from_kernel(&maps)?;
        let knock_space = rotate::knock_space(&clients);
        let mut daemon = Daemon {
            state_dir: state_dir.clone(),
            options,
            config,
            state,
            clients,
            installed,
            knock_space,
            program,
            maps,
            started: Instant::now(),
            knock_outcomes: metrics::outcome_counters(),
            refusals: Default::default(),
            metrics: None,
            stop: false,
            filter_live: 0,
        };
        daemon.rotate()?;
        if !adopting {
            // New maps remember no used sequence either: the last stop
            // wrote those of the slots installed now.
            daemon.restore_used();
        }
        for iface in daemon.options.ifaces.clone() {
            if daemon.program.attachments.iter().any(|a| a.iface == iface) {
                continue; // taken over from the earlier run
            }
            daemon.program.attach(&iface, daemon.options.mode)?;
        }
        Ok((daemon, events))
    })();
    let (mut daemon, events) = match started {
        Ok(started) => started,
        Err(err) => {
            // Nothing may stay behind from a refused start; but what an
            // earlier run left attached stays attached (fail closed).
            if !adopting && let Err(cleanup) = loader::remove_pins(&pin_dir) {
                warn!("cleanup after a failed start: {cleanup:#}");
            }
            return Err(err);
        }
    };
    if adopting {
        info!("took over the program, maps and links an earlier run left pinned");
        match daemon.revoke_removed_clients() {
            Ok((0, 0)) => {}
            Ok((sources, flows)) => {
                info!(
                    sources,
                    flows,
                    "clients removed while no daemon ran: their sources revoked, their sessions ended"
                );
                let mut record = audit::Record::now("revoked", "-".to_owned());
                record.flows = Some(flows as u64);
                record.detail = Some(format!(
                    "at take-over: {sources} sources and {flows} flows of clients removed while no daemon ran"
                ));
                audit::append_or_warn(&daemon.state_dir, &record);
            }
            Err(err) => {
                warn!("cannot revoke what clients removed while no daemon ran admitted: {err:#}")
            }
        }
    }
    // Armed once the daemon runs, so the test hook cuts a rotation of a
    // running daemon, never its start.
    if let Some(write) = abort_after_write {
        warn!(
            "{}={write}: this daemon kills itself after map write {write} of a rotation (a test hook)",
            maps::TEST_ABORT_AFTER_WRITES
        );
        daemon.maps.abort_after_write(Some(write));
    }
    for a in &daemon.program.attachments {
        info!(interface = %a.iface, mode = ?a.mode, "attached");
    }
    let protected = daemon.protected();
    if protected.is_empty() {
        info!("no port is protected yet (knock-xdp protect PORT)");
    } else {
        info!(ports = %ports::join(&protected), config = %daemon.config.describe(), "protecting");
    }
    match &daemon.options.server_name {
        Ok(name) => {
            info!(server_name = %name, "fleet clients derive their sequences for this name")
        }
        Err(why) => warn!("no server name, so fleet clients are skipped: {why}"),
    }
    info!(
        clients = daemon.clients.len(),
        sequences = daemon.installed.count(),
        "knock sequences installed"
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = runtime.block_on(daemon.serve(events));

    let socket = state_dir.control_socket();
    let _ = fs::remove_file(&socket);
    let Daemon { program, maps, .. } = daemon;
    let ifaces: Vec<String> = program.attachments.iter().map(|a| a.iface.clone()).collect();
    // Detached first, so no knock completes after the records are read;
    // the maps live on while this process holds them.
    let detached = program.shutdown();
    if let Err(err) = crate::used::save(&state_dir, &maps) {
        warn!("cannot keep the used sequences for the next start: {err:#}");
    }
    detached?;
    info!(interfaces = %ifaces.join(" "), "detached; all pins removed");
    served
}

impl Daemon {
    /// The ports in force: the config file's and the state's.
    fn protected(&self) -> BTreeSet<ProtoPort> {
        self.state.protected.union(&self.config.protected).copied().collect()
    }

    /// The always-allowed networks in force: the config file's and the state's.
    fn allowed_nets(&self) -> BTreeSet<Cidr> {
        self.state.allow_nets.union(&self.config.allow).copied().collect()
    }

    async fn serve(&mut self, mut events: RingBuf<MapData>) -> Result<()> {
        let socket = self.state_dir.control_socket();
        // We hold the daemon lock, so a socket file left here is stale.
        let _ = fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket)
            .with_context(|| format!("cannot listen on {}", socket.display()))?;
        fs::set_permissions(&socket, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", socket.display()))?;
        let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let mut sighup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        let mut rotate = tokio::time::interval(ROTATE_INTERVAL);
        let mut flow_sweep = tokio::time::interval(FLOW_SWEEP_INTERVAL);
        let mut event_poll = tokio::time::interval(EVENT_POLL_INTERVAL);
        let mut metrics_refresh = tokio::time::interval(metrics::REFRESH_INTERVAL);
        if let Some(addr) = self.options.metrics_listen {
            let first = self.metrics_snapshot()?;
            self.metrics = Some(metrics::MetricsServer::start(addr, first)?);
            info!(address = %addr, "serving metrics");
        }
        info!(socket = %socket.display(), "ready");

        while !self.stop {
            tokio::select! {
                _ = sigterm.recv() => { info!("SIGTERM: detaching"); break; }
                _ = sigint.recv() => { info!("SIGINT: detaching"); break; }
                _ = sighup.recv() => {
                    if let Err(err) = self.reload() {
                        warn!("SIGHUP: nothing changed: {err:#}");
                    }
                }
                _ = sweep.tick() => {
                    self.sweep();
                    self.watch_interfaces();
                }
                _ = flow_sweep.tick() => {
                    self.sweep_flows();
                    self.tidy_filter();
                }
                _ = rotate.tick() => {
                    if let Err(err) = self.rotate() {
                        warn!("installing sequences: {err:#}");
                    }
                }
                _ = event_poll.tick() => {
                    // Bounded, so a flood of events cannot starve rotation
                    // and the control socket; the rest waits a tick.
                    for _ in 0..EVENTS_PER_POLL {
                        let Some(item) = events.next() else { break };
                        self.log_event(&item);
                    }
                    self.report_unlogged_refusals();
                }
                _ = metrics_refresh.tick(), if self.metrics.is_some() => self.refresh_metrics(),
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => self.answer(stream).await,
                    Err(err) => warn!("control socket: {err}"),
                },
            }
        }
        Ok(())
    }
}

/// The test hook of [`maps::TEST_ABORT_AFTER_WRITES`], from the environment.
fn test_abort_after_write() -> Result<Option<u32>> {
    let Some(value) = std::env::var_os(maps::TEST_ABORT_AFTER_WRITES) else {
        return Ok(None);
    };
    let value = value.to_string_lossy();
    match value.parse::<u32>() {
        Ok(write) if write > 0 => Ok(Some(write)),
        _ => bail!(
            "{}={value}: expected a number of map writes, 1 or more (a test hook)",
            maps::TEST_ABORT_AFTER_WRITES
        ),
    }
}

/// Seeds the flow table with the TCP connections established to `ports`, so
/// protecting a port never cuts the session it is protected from.
pub(crate) fn keep_established(maps: &mut KernelMaps, ports: &BTreeSet<ProtoPort>) -> Result<()> {
    let tcp: BTreeSet<u16> =
        ports.iter().filter(|p| p.proto == Proto::Tcp).map(|p| p.port).collect();
    if tcp.is_empty() {
        return Ok(());
    }
    let established = procnet::established_to(&tcp);
    let keys: Vec<_> =
        established.iter().map(|&(ip, port, local)| maps::tcp_flow(ip, port, local)).collect();
    maps.seed_flows(&keys)?;
    for (ip, port, local) in established {
        info!(source = %ip, source_port = port, port = local, "established connection kept open");
    }
    Ok(())
}
