//! The command line: the commands and their dispatch. Each group of commands
//! lives in its own module with its arguments and what it does:
//!
//! | module | commands |
//! |---|---|
//! | `attach` | `attach`, `detach`, `reload`: the daemon |
//! | `access` | `protect`, `unprotect`, `allow`, `revoke`: the door |
//! | `status` | `list`, `status`, `log`: what the daemon holds and did |
//! | `client` | `client add\|list\|show\|remove` |
//! | `knock` | `knock`, `sequence`, `check`: the client side |
//! | `system` | `install`, `uninstall`, `completions`, `manpage` |
//!
//! Commands that change what the daemon holds go through `offline`: the
//! running daemon, or the state files when none runs.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};
use knock_common::server_id::ServerId;

mod access;
mod attach;
mod client;
mod knock;
mod offline;
mod status;
mod system;

use crate::{
    config,
    state::{DEFAULT_STATE_DIR, StateDir, require_root},
};

/// Port knocking in the kernel: protected ports are invisible until a source knocks.
#[derive(Debug, Parser)]
#[command(name = "knock-xdp", version, propagate_version = true)]
pub struct Cli {
    /// Directory holding everything this instance owns (state, control socket).
    #[arg(long, global = true, env = "KNOCK_XDP_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// The config file (default /etc/knock-xdp/config.toml, if it exists).
    #[arg(long, global = true, env = "KNOCK_XDP_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log format: human-readable lines, or one JSON object a line (default human).
    #[arg(long, global = true, value_enum, env = "KNOCK_XDP_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Less log output (-q warnings only, -qq errors only).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "verbose")]
    pub quiet: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format`: [`config::LogFormat`], as the command line spells it.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

impl From<LogFormat> for config::LogFormat {
    fn from(format: LogFormat) -> Self {
        match format {
            LogFormat::Human => config::LogFormat::Human,
            LogFormat::Json => config::LogFormat::Json,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the XDP program, attach it and run the daemon in the foreground.
    ///
    /// SIGINT or SIGTERM detach cleanly. If the daemon is killed, the program
    /// stays attached (protection stays in force) until 'knock-xdp detach'.
    Attach(attach::AttachArgs),
    /// Detach from one interface, or from all (then every pin knock-xdp made goes too).
    Detach(attach::DetachArgs),
    /// Protect ports: drop packets to them unless the source is allowed.
    ///
    /// PORT alone protects both TCP and UDP; PORT/tcp or PORT/udp only one.
    /// Persisted: applies at once on the running daemon and at every start.
    Protect(access::ProtectArgs),
    /// Stop protecting ports.
    Unprotect(access::UnprotectArgs),
    /// Admit a source address for a while, or a network for good (--permanent).
    ///
    /// Connections opened while a source is admitted outlive its window for
    /// as long as they stay active (see attach --idle-timeout).
    Allow(access::AllowArgs),
    /// Remove an allowed address (ending its open connections) or an always-allowed network.
    Revoke(access::RevokeArgs),
    /// Show protected ports and allowed sources with their time left.
    List(status::ListArgs),
    /// Show interfaces, XDP mode, program and counters of the running daemon.
    Status(status::StatusArgs),
    /// Manage the clients allowed to knock.
    #[command(subcommand)]
    Client(client::ClientCommand),
    /// Send a profile's current knock sequence to each HOST, in turn.
    ///
    /// With --check PORT, knock again while PORT stays filtered (a knock lost
    /// on the way, or this slot's sequence already used from another
    /// address), each time with another sequence the server accepts: those
    /// of the current slot and the slots either side, each of which opens the
    /// door once. Which slots went to which server is remembered per profile
    /// (in --slots-dir), so a second knock in the same slot, from a new
    /// address, takes an unused one at once; a run that left the port
    /// filtered forgets its slots (a lost knock or a mistyped passphrase never
    /// used them). A static sequence is simply sent again.
    ///
    /// Fleet profiles knock a different sequence at every server, derived
    /// from the server's name: HOST as typed (a name, or an address), or,
    /// to knock at an address (or another name) as the server NAME,
    /// NAME=ADDRESS. NAME must be the server's server_name.
    ///
    /// Authenticator profiles: the code belongs to one 30-second step, so the
    /// retries take it as the code of the current, the previous and the next
    /// step in turn (a code read just before the step changed). A code that
    /// was already used, here or elsewhere, cannot be retried: knock again
    /// with the next code.
    ///
    /// Exit status: 0 when sent; with --check, 0 open, 3 closed, 4 filtered;
    /// 1 on errors. With several hosts, each is knocked (and checked) even
    /// when another fails, and the status is the worst of them: errors, then
    /// filtered, then closed.
    Knock(knock::KnockArgs),
    /// Recent door openings and refusals (replays, resets, timeouts), per client.
    Log(status::LogArgs),
    /// Print a profile's current knock sequence on one line (for any knock tool).
    Sequence(knock::SequenceArgs),
    /// Re-read the state file and the clients in the running daemon (as SIGHUP
    /// does), keeping allowed sources, open flows and knocks in progress.
    Reload,
    /// Write a systemd unit that runs 'attach' on IFACE... (and start it when
    /// systemd runs this system).
    ///
    /// Without --iface, the unit runs 'attach' alone, which attaches to the
    /// config file's `interfaces` (and reads its ports, networks and
    /// server_name) at every start: one unit for every server of a fleet,
    /// each with its own config file. 'systemctl reload' sends SIGHUP.
    Install(system::InstallArgs),
    /// Stop and remove the systemd unit written by 'install'.
    Uninstall(system::UninstallArgs),
    /// Print shell completions (bash, zsh, fish, ...).
    Completions(system::CompletionsArgs),
    /// Print the man page (roff).
    Manpage,
    /// Probe a TCP port: prints open, closed or filtered.
    ///
    /// Exit status: 0 open, 3 closed, 4 filtered, 1 on errors.
    Check(knock::CheckArgs),
}

fn parse_server_name(text: &str) -> Result<ServerId, String> {
    ServerId::parse(text).map_err(|e| format!("invalid server name '{text}': {e}"))
}

impl Command {
    fn name(&self) -> &'static str {
        use client::ClientCommand;
        match self {
            Command::Attach(_) => "attach",
            Command::Detach(_) => "detach",
            Command::Protect(_) => "protect",
            Command::Unprotect(_) => "unprotect",
            Command::Allow(_) => "allow",
            Command::Revoke(_) => "revoke",
            Command::List(_) => "list",
            Command::Status(_) => "status",
            Command::Check(_) => "check",
            Command::Client(ClientCommand::Add { .. }) => "client add",
            Command::Client(ClientCommand::List { .. }) => "client list",
            Command::Client(ClientCommand::Remove { .. }) => "client remove",
            Command::Client(ClientCommand::Show { .. }) => "client show",
            Command::Log(_) => "log",
            Command::Reload => "reload",
            Command::Install(_) => "install",
            Command::Uninstall(_) => "uninstall",
            Command::Completions(_) => "completions",
            Command::Manpage => "manpage",
            Command::Knock(_) => "knock",
            Command::Sequence(_) => "sequence",
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let state = StateDir::new(&cli.state_dir);
    let config = cli.config.as_deref();
    let command = cli.command;
    // The client side runs anywhere; everything else is the server's.
    let needs_root = !matches!(
        command,
        Command::Check(_)
            | Command::Knock(_)
            | Command::Sequence(_)
            | Command::Completions(_)
            | Command::Manpage
    );
    if needs_root {
        require_root(command.name())?;
        state.check()?;
    }
    match command {
        Command::Attach(args) => attach::attach(state, config, args)?,
        Command::Detach(args) => attach::detach(&state, args)?,
        Command::Reload => attach::reload(&state)?,
        Command::Protect(args) => access::protect(&state, args)?,
        Command::Unprotect(args) => access::unprotect(&state, args)?,
        Command::Allow(args) => access::allow(&state, args)?,
        Command::Revoke(args) => access::revoke(&state, args)?,
        Command::List(args) => status::list(&state, args)?,
        Command::Status(args) => status::status(&state, args)?,
        Command::Log(args) => status::log(&state, args)?,
        Command::Client(command) => client::run(&state, config, command)?,
        Command::Knock(args) => return knock::knock(args),
        Command::Sequence(args) => knock::sequence(args)?,
        Command::Check(args) => return knock::check(args),
        Command::Install(args) => system::install(&state, config, args)?,
        Command::Uninstall(args) => system::uninstall(args)?,
        Command::Completions(args) => system::completions(args),
        Command::Manpage => system::manpage()?,
    }
    Ok(ExitCode::SUCCESS)
}
