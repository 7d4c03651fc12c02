//! The long-running daemon: owns the loaded program and its maps, answers
//! control requests and sweeps expired allow entries.
//!
//! It runs on one thread: every task (control, sweep, signals) is a branch of
//! one `select!`, so map updates never race each other.

mod control;
mod sweep;

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use tokio::{
    net::UnixListener,
    signal::unix::{SignalKind, signal},
};
use tracing::{info, warn};

use crate::{
    loader::{self, Mode, Program},
    ports,
    state::{State, StateDir},
    tables::Tables,
};

/// How often expired allow entries are removed. The kernel checks deadlines
/// itself, so this only bounds how long a dead entry occupies a slot.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

pub struct AttachOptions {
    pub ifaces: Vec<String>,
    pub mode: Mode,
}

/// Everything the daemon's tasks share.
pub(crate) struct Daemon {
    state_dir: StateDir,
    state: State,
    program: Program,
    tables: Tables,
    started: Instant,
    /// Set by a `detach` that leaves no interface: the loop ends after replying.
    stop: bool,
}

/// Loads, attaches and serves until SIGINT/SIGTERM or `detach`; then detaches
/// cleanly. Every check that can fail on user input runs before anything is
/// loaded, so a refused start changes nothing.
pub fn run(state_dir: StateDir, options: AttachOptions) -> Result<()> {
    for iface in &options.ifaces {
        loader::if_index(iface)?;
    }
    state_dir.create()?;
    let Some(_lock) = state_dir.try_lock()? else {
        bail!(
            "a knock-xdp daemon is already running for state directory {}",
            state_dir.path().display()
        );
    };
    let state = state_dir.load()?;
    loader::ensure_bpffs()?;
    let mut program = Program::load(loader::pin_dir(&state_dir)?)?;

    let started = (|| -> Result<Daemon> {
        let mut tables = Tables::take(&mut program.ebpf)?;
        // Ports are protected before the first packet is seen.
        tables.set_protected(&Default::default(), &state.protected)?;
        for iface in &options.ifaces {
            program.attach(iface, options.mode)?;
        }
        Ok(Daemon {
            state_dir: state_dir.clone(),
            state,
            program,
            tables,
            started: Instant::now(),
            stop: false,
        })
    })();
    let mut daemon = match started {
        Ok(daemon) => daemon,
        Err(err) => {
            // Nothing may stay behind from a refused start.
            if let Err(cleanup) = loader::remove_pins(&loader::pin_dir(&state_dir)?) {
                warn!("cleanup after a failed start: {cleanup:#}");
            }
            return Err(err);
        }
    };
    for a in &daemon.program.attachments {
        info!(interface = %a.iface, mode = ?a.mode, "attached");
    }
    if daemon.state.protected.is_empty() {
        info!("no port is protected yet (knock-xdp protect PORT)");
    } else {
        info!(ports = %ports::join(&daemon.state.protected), "protecting");
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = runtime.block_on(daemon.serve());

    let socket = state_dir.control_socket();
    let _ = fs::remove_file(&socket);
    let Daemon { program, .. } = daemon;
    let ifaces: Vec<String> = program
        .attachments
        .iter()
        .map(|a| a.iface.clone())
        .collect();
    program.shutdown()?;
    info!(interfaces = %ifaces.join(" "), "detached; all pins removed");
    served
}

impl Daemon {
    async fn serve(&mut self) -> Result<()> {
        let socket = self.state_dir.control_socket();
        // We hold the daemon lock, so a socket file left here is stale.
        let _ = fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket)
            .with_context(|| format!("cannot listen on {}", socket.display()))?;
        fs::set_permissions(&socket, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", socket.display()))?;
        let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        info!(socket = %socket.display(), "ready");

        while !self.stop {
            tokio::select! {
                _ = sigterm.recv() => { info!("SIGTERM: detaching"); break; }
                _ = sigint.recv() => { info!("SIGINT: detaching"); break; }
                _ = sweep.tick() => self.sweep(),
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => self.answer(stream).await,
                    Err(err) => warn!("control socket: {err}"),
                },
            }
        }
        Ok(())
    }
}
