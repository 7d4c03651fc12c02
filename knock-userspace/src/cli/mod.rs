//! The command line: clap definitions and what each command does.

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use knock_common::server_id::ServerId;
use tracing::warn;

mod client;
mod system;

use crate::{
    audit,
    check::{self, PortState},
    checks,
    clients::ClientStore,
    config::{self, Config, FailedKnocks},
    control::{self, Changed, Listing, Request, Status, Unreachable},
    daemon::{self, AttachOptions},
    duration::{format_duration, parse_duration},
    loader::{self, Mode},
    nets::Cidr,
    ports::{self, PortSpec, Proto, ProtoPort},
    profile::{self, Profile, UnlockMode},
    prompt::read_secret,
    sender::{self, record::KnockRecord},
    state::{DEFAULT_STATE_DIR, State, StateDir, require_root},
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the XDP program, attach it and run the daemon in the foreground.
    ///
    /// SIGINT or SIGTERM detach cleanly. If the daemon is killed, the program
    /// stays attached (protection stays in force) until 'knock-xdp detach'.
    Attach {
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
    },
    /// Detach from one interface, or from all; removes every pin knock-xdp made.
    Detach {
        /// Only this interface (default: all).
        iface: Option<String>,
    },
    /// Protect ports: drop packets to them unless the source is allowed.
    ///
    /// PORT alone protects both TCP and UDP; PORT/tcp or PORT/udp only one.
    /// Persisted: applies at once on the running daemon and at every start.
    Protect {
        #[arg(required = true, value_name = "PORT[/tcp|/udp]", value_parser = parse_port_spec)]
        ports: Vec<PortSpec>,
        /// Protect a port that lies in a client's knock ports anyway (logged
        /// and audited).
        #[arg(long)]
        force: bool,
    },
    /// Stop protecting ports.
    Unprotect {
        #[arg(required = true, value_name = "PORT[/tcp|/udp]", value_parser = parse_port_spec)]
        ports: Vec<PortSpec>,
    },
    /// Admit a source address for a while, or a network for good (--permanent).
    ///
    /// Connections opened while a source is admitted outlive its window for
    /// as long as they stay active (see attach --idle-timeout).
    Allow {
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
    },
    /// Remove an allowed address (ending its open connections) or an always-allowed network.
    Revoke {
        #[arg(value_name = "ADDR|CIDR", value_parser = parse_target)]
        target: Cidr,
    },
    /// Show protected ports and allowed sources with their time left.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show interfaces, XDP mode, program and counters of the running daemon.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Manage the clients allowed to knock.
    #[command(subcommand)]
    Client(ClientCommand),
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
    Knock {
        /// Addresses or host names of the servers; NAME=ADDRESS knocks on
        /// ADDRESS as the server NAME (fleet profiles).
        #[arg(value_name = "HOST|NAME=ADDRESS", required = true)]
        hosts: Vec<String>,
        #[command(flatten)]
        profile: ProfileArgs,
        /// Milliseconds between knocks.
        #[arg(long, value_name = "MS", default_value_t = 50)]
        delay: u64,
        /// Afterwards, report whether this TCP port is reachable (and knock
        /// again while it is filtered).
        #[arg(long, value_name = "PORT", value_parser = parse_port_arg)]
        check: Option<u16>,
        /// With --check: knock at most this many more times while the port
        /// stays filtered.
        #[arg(long, value_name = "N", default_value_t = 2, requires = "check")]
        retries: u32,
        /// Where the slots each profile used are remembered (default
        /// $XDG_STATE_HOME/knock-xdp, or ~/.local/state/knock-xdp).
        #[arg(long, value_name = "DIR", env = "KNOCK_XDP_SLOTS_DIR")]
        slots_dir: Option<PathBuf>,
        /// SPA profiles: ask the server to admit this address instead of the
        /// datagram's source (behind NAT; the client must be allowed to).
        #[arg(long, value_name = "ADDR")]
        admit: Option<std::net::IpAddr>,
    },
    /// Recent door openings and refusals (replays, resets, timeouts), per client.
    Log {
        #[arg(long)]
        json: bool,
        /// Only this client's entries.
        #[arg(long, value_name = "NAME")]
        client: Option<String>,
        /// How many of the most recent entries.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
    },
    /// Print a profile's current knock sequence on one line (for any knock tool).
    Sequence {
        #[command(flatten)]
        profile: ProfileArgs,
        /// Fleet profiles: the server (its server_name) the sequence is for.
        #[arg(long, value_name = "NAME", value_parser = parse_server_name)]
        server: Option<ServerId>,
    },
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
    Install {
        /// Interfaces the service attaches to (default: `interfaces` of the
        /// config file, read at every start).
        #[arg(long = "iface", value_name = "IFACE")]
        ifaces: Vec<String>,
        /// Where to write knock-xdp.service.
        #[arg(long, value_name = "DIR", default_value = system::DEFAULT_UNIT_DIR)]
        unit_dir: PathBuf,
    },
    /// Stop and remove the systemd unit written by 'install'.
    Uninstall {
        #[arg(long, value_name = "DIR", default_value = system::DEFAULT_UNIT_DIR)]
        unit_dir: PathBuf,
    },
    /// Print shell completions (bash, zsh, fish, ...).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Manpage,
    /// Probe a TCP port: prints open, closed or filtered.
    ///
    /// Exit status: 0 open, 3 closed, 4 filtered, 1 on errors.
    Check {
        /// Address or host name.
        host: String,
        #[arg(value_parser = parse_port_arg)]
        port: u16,
        /// How long to wait for an answer.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "2s")]
        timeout: Duration,
    },
}

/// The profile to knock with, what unlocks it, and the time to knock as.
#[derive(Debug, clap::Args)]
pub struct ProfileArgs {
    /// The client profile: a file, or its URI (knock-xdp:profile?...).
    #[arg(long, value_name = "FILE|URI", env = "KNOCK_XDP_PROFILE", hide_env_values = true)]
    profile: String,
    #[command(flatten)]
    unlock: Unlock,
    /// Knock as at this time instead of now (RFC 3339, UTC).
    #[arg(long, value_name = "TIME", value_parser = sender::parse_time)]
    at: Option<SystemTime>,
}

/// What a passphrase or authenticator profile needs before it can knock.
#[derive(Debug, clap::Args)]
pub struct Unlock {
    /// The authenticator's current 6-digit code (authenticator profiles).
    #[arg(long, value_parser = parse_code)]
    code: Option<u32>,
    /// The PIN, from the first line of FILE (asked for when missing).
    #[arg(long, value_name = "FILE")]
    pin_file: Option<PathBuf>,
    /// The passphrase, from the first line of FILE (asked for when missing).
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
}

fn parse_code(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(code) if text.len() == 6 => Ok(code),
        _ => Err(format!("invalid code '{text}' (6 digits, as the authenticator shows it)")),
    }
}

/// Loads a profile and unlocks it with what its kind needs.
fn load_profile(args: &ProfileArgs) -> Result<Profile> {
    let unlock = &args.unlock;
    let mut profile = Profile::load(&args.profile)?;
    match profile.needs() {
        Some(UnlockMode::Passphrase) => {
            let passphrase = read_secret(unlock.passphrase_file.as_deref(), "passphrase", false)?;
            profile.unlock_passphrase(&passphrase);
        }
        Some(_) => {
            let code = unlock
                .code
                .context("this is an authenticator profile: give the current code with --code")?;
            let pin = read_secret(unlock.pin_file.as_deref(), "PIN", false)?;
            profile.unlock_totp(code, &pin);
        }
        None => {}
    }
    Ok(profile)
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Create a client and print its profile (or write it with --profile-out).
    ///
    /// Rotating clients knock on ports derived from a fresh 256-bit secret and
    /// the time slot; --static makes a fixed sequence that any knock client
    /// (e.g. knockd's 'knock') can send, but that can be replayed.
    Add {
        name: String,
        /// Knocks per sequence (1-16).
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=16), default_value_t = profile::DEFAULT_LENGTH)]
        length: u8,
        /// Slot length: the sequence changes this often.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
        slot: Duration,
        /// Range the knock ports are drawn from.
        #[arg(long, value_name = "LO-HI", value_parser = profile::parse_range, default_value = "61000-65535")]
        ports: (u16, u16),
        /// Knock with TCP SYNs or UDP datagrams.
        #[arg(long, value_enum, default_value_t = Proto::Tcp)]
        proto: Proto,
        /// Ports never to knock on (e.g. 62000,63000-63010).
        #[arg(long, value_name = "PORTS", value_parser = parse_port_list)]
        exclude: Option<PortList>,
        /// A fixed sequence in knockd's syntax, e.g. 7000,8000:udp,9000.
        #[arg(long = "static", value_name = "SEQ", value_parser = parse_static, conflicts_with_all = ["length", "slot", "ports", "proto", "exclude"])]
        static_sequence: Option<StaticSequence>,
        /// Authenticator mode: knock with the 6-digit code of an authenticator
        /// app (TOTP) and a PIN; the profile then holds no secret.
        #[arg(long, conflicts_with_all = ["static_sequence", "slot", "passphrase_file"])]
        totp: bool,
        /// The PIN of an authenticator client, from FILE (asked for when missing).
        #[arg(long, value_name = "FILE", requires = "totp")]
        pin_file: Option<PathBuf>,
        /// Single-packet authorization: the client opens the door with one
        /// UDP datagram, authenticated with HMAC-SHA256 and verified in the
        /// kernel, sent to a random port of --ports (docs/spa-v1.md).
        #[arg(long, conflicts_with_all = ["static_sequence", "totp", "length", "slot", "proto", "exclude"])]
        spa: bool,
        /// SPA: the client may name the address to admit (knock --admit), for
        /// a client behind NAT that knows its public address.
        #[arg(long, requires = "spa")]
        allow_named_address: bool,
        /// One profile for many servers: each server derives its own
        /// sequences from its server_name, so a sequence seen at one server
        /// does not open another (docs/sequence-v2.md). Install the same
        /// client file on every server.
        #[arg(long, conflicts_with_all = ["static_sequence", "spa"])]
        fleet: bool,
        /// Derive the secret from a passphrase (first line of FILE); the profile
        /// then holds no secret.
        #[arg(long, value_name = "FILE", conflicts_with = "static_sequence")]
        passphrase_file: Option<PathBuf>,
        /// PBKDF2 iterations for a passphrase or PIN (default 600000).
        #[arg(long, value_parser = clap::value_parser!(u32).range(10_000..))]
        cost: Option<u32>,
        /// Also print the profile as a URI and a QR code (they hold the secret).
        #[arg(long)]
        qr: bool,
        /// Write the profile to FILE (mode 0600) instead of standard output.
        #[arg(long, value_name = "FILE")]
        profile_out: Option<PathBuf>,
        /// Accept a static sequence under 3 knocks, or knock ports that hold
        /// a protected port or a listening service (logged and audited).
        #[arg(long)]
        force: bool,
    },
    /// Show a client's parameters; --reveal prints its profile URI.
    Show {
        name: String,
        /// Print the profile URI (it holds the secret of random clients).
        #[arg(long)]
        reveal: bool,
        /// Print the profile URI as a QR code (needs --reveal).
        #[arg(long)]
        qr: bool,
        #[arg(long)]
        json: bool,
    },
    /// List clients (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a client: its sequences stop opening the door at once.
    Remove { name: String },
}

/// `--exclude` as one value (clap would read a `Vec` as repeated values).
#[derive(Clone, Debug)]
pub struct PortList(Vec<u16>);

/// `--static` as one value.
#[derive(Clone, Debug)]
pub struct StaticSequence(Vec<ProtoPort>);

fn parse_port_list(text: &str) -> Result<PortList, String> {
    profile::parse_port_list(text).map(PortList)
}

fn parse_static(text: &str) -> Result<StaticSequence, String> {
    profile::parse_static(text).map(StaticSequence)
}

fn parse_port_spec(text: &str) -> Result<PortSpec, String> {
    text.parse()
}

fn parse_port_arg(text: &str) -> Result<u16, String> {
    ports::parse_port(text)
}

fn parse_target(text: &str) -> Result<Cidr, String> {
    text.parse()
}

fn parse_server_name(text: &str) -> Result<ServerId, String> {
    ServerId::parse(text).map_err(|e| format!("invalid server name '{text}': {e}"))
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Command::Attach { .. } => "attach",
            Command::Detach { .. } => "detach",
            Command::Protect { .. } => "protect",
            Command::Unprotect { .. } => "unprotect",
            Command::Allow { .. } => "allow",
            Command::Revoke { .. } => "revoke",
            Command::List { .. } => "list",
            Command::Status { .. } => "status",
            Command::Check { .. } => "check",
            Command::Client(ClientCommand::Add { .. }) => "client add",
            Command::Client(ClientCommand::List { .. }) => "client list",
            Command::Client(ClientCommand::Remove { .. }) => "client remove",
            Command::Client(ClientCommand::Show { .. }) => "client show",
            Command::Log { .. } => "log",
            Command::Reload => "reload",
            Command::Install { .. } => "install",
            Command::Uninstall { .. } => "uninstall",
            Command::Completions { .. } => "completions",
            Command::Manpage => "manpage",
            Command::Knock { .. } => "knock",
            Command::Sequence { .. } => "sequence",
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let state = StateDir::new(&cli.state_dir);
    let cli_config = cli.config;
    let command = cli.command;
    let needs_root = !matches!(
        command,
        Command::Check { .. }
            | Command::Knock { .. }
            | Command::Sequence { .. }
            | Command::Completions { .. }
            | Command::Manpage
    );
    if needs_root {
        require_root(command.name())?;
        state.check()?;
    }
    match command {
        Command::Attach {
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
        } => {
            // Flags and KNOCK_XDP_* variables win over the file, the file over the defaults.
            let config = Config::load(cli_config.as_deref())?;
            let refusals = checks::config_refusals(&config)?;
            let ifaces = if ifaces.is_empty() { config.interfaces.clone() } else { ifaces };
            if ifaces.is_empty() {
                bail!(
                    "no interface to attach to: name one, or set `interfaces` in {}",
                    config.describe()
                );
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
            checks::force_or_refuse(&state, force, &config.describe(), None, &refusals)?;
            let options = AttachOptions {
                ifaces,
                mode: mode.or(config.mode).unwrap_or(Mode::Auto),
                open_window: open_window.or(config.open_window).unwrap_or(Duration::from_secs(30)),
                knock_timeout: knock_timeout
                    .or(config.knock_timeout)
                    .unwrap_or(Duration::from_secs(10)),
                idle_timeout: idle_timeout
                    .or(config.idle_timeout)
                    .unwrap_or(Duration::from_secs(15 * 60)),
                fail_open: fail_open || config.fail_open,
                failed_knocks: failed_knocks
                    .or(config.failed_knocks)
                    .unwrap_or(daemon::FAILED_KNOCKS),
                spa_skew: config.spa_skew.unwrap_or(daemon::SPA_SKEW),
                metrics_listen,
                force,
                server_name: match server_name.or(config.server_name) {
                    Some(name) => Ok(name),
                    None => config::host_name_identity(),
                },
            };
            daemon::run(state, options, config)?
        }
        Command::Client(command) => client::run(&state, cli_config.as_deref(), command)?,
        Command::Reload => print_changed(control::request(&state, &Request::Reload)?),
        Command::Install { ifaces, unit_dir } => {
            system::install(&state, &unit_dir, &ifaces, cli_config.as_deref())?
        }
        Command::Uninstall { unit_dir } => system::uninstall(&unit_dir)?,
        Command::Completions { shell } => system::completions(shell),
        Command::Manpage => system::manpage()?,
        Command::Log { json, client, lines } => {
            audit::print(&state, json, client.as_deref(), lines)?
        }
        Command::Knock { hosts, profile: args, delay, check, retries, slots_dir, admit } => {
            let profile = load_profile(&args)?;
            let mut record = KnockRecord::open(slots_dir.as_deref(), &profile);
            let options = sender::Options {
                delay: Duration::from_millis(delay),
                check,
                retries,
                at: args.at,
                admit,
            };
            let mut worst = Worst::default();
            for host in &hosts {
                let knocked = sender::server(&profile, host)
                    .and_then(|server| knock_host(&profile, &mut record, &server, &options));
                match knocked {
                    Ok(state) => worst.add(state),
                    Err(err) => {
                        eprintln!("knock-xdp: {err:#}");
                        worst.error = true;
                    }
                }
            }
            return Ok(worst.exit_code());
        }
        Command::Sequence { profile: args, server } => {
            let profile = load_profile(&args)?;
            if profile.is_fleet() && server.is_none() {
                bail!(
                    "this is a fleet profile: each server has its own sequence; name the server \
                     with --server NAME (its server_name)"
                );
            }
            let at = args.at;
            let (_, steps) = sender::steps_at(&profile, at, server.as_ref())?;
            println!("{}", sender::sequence_line(&steps));
        }
        Command::Detach { iface } => detach(&state, iface)?,
        Command::Protect { ports, force } => {
            let requested = ports::expand_all(&ports);
            // A broken client file is reported by the commands that need
            // the clients; it does not stand in the way of protecting.
            let clients = ClientStore::new(&state).load().unwrap_or_else(|err| {
                warn!("cannot check the clients' knock ports: {err:#}");
                Vec::new()
            });
            let refusals = checks::protect_refusals(&requested, &clients);
            checks::force_or_refuse(&state, force, &ports::join(&requested), None, &refusals)?;
            change_protected(&state, &ports, true)?
        }
        Command::Unprotect { ports } => change_protected(&state, &ports, false)?,
        Command::Allow { target, permanent: true, force, .. } => {
            if let Some(why) = checks::never_a_source(&target) {
                bail!("{why}");
            }
            let refusals: Vec<String> = checks::too_wide(&target).into_iter().collect();
            checks::force_or_refuse(&state, force, &target.to_string(), None, &refusals)?;
            allow_network(&state, target)?
        }
        Command::Allow { target, duration, permanent: false, .. } => {
            if let Some(why) = checks::never_a_source(&target) {
                bail!("{why}");
            }
            if !target.is_host() {
                bail!("a network can only be allowed --permanent ({target})");
            }
            let for_ms = duration.as_millis() as u64;
            print_changed(control::request(
                &state,
                &Request::Allow { addr: target.addr(), for_ms },
            )?);
        }
        Command::Revoke { target } => revoke(&state, target)?,
        Command::List { json } => {
            let listing: Listing = control::request(&state, &Request::List)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&listing)?);
            } else {
                print_listing(&listing);
            }
        }
        Command::Status { json } => {
            let status: Status = control::request(&state, &Request::Status)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
        }
        Command::Check { host, port, timeout } => {
            let (addr, port_state) = check::check(&host, port, timeout)?;
            println!("{addr} {}", port_state.as_str());
            return Ok(ExitCode::from(port_state.exit_code()));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Knocks on one server; with `--check`, the state its port was left in.
fn knock_host(
    profile: &Profile,
    record: &mut KnockRecord,
    server: &sender::Server,
    options: &sender::Options,
) -> Result<Option<PortState>> {
    let target = server.addr;
    let outcome = sender::knock(profile, record, server, options, |line| println!("{line}"))?;
    let Some((addr, state)) = outcome.port else {
        return Ok(None);
    };
    let tries = if outcome.tries == 1 { "try" } else { "tries" };
    println!(
        "{addr} {} after {} {tries} ({:.1} s)",
        state.as_str(),
        outcome.tries,
        outcome.elapsed.as_secs_f64()
    );
    if state == PortState::Filtered {
        if outcome.exhausted {
            eprintln!(
                "knock-xdp: {addr} stayed filtered, and {target} accepts no other sequence now"
            );
        }
        if profile.mode() == Some(UnlockMode::Totp) {
            eprintln!(
                "knock-xdp: an authenticator code opens the door once: knock again with the next code"
            );
        }
        if let Some(id) = server.id {
            eprintln!(
                "knock-xdp: this fleet profile knocked {target} as the server '{id}': if that is \
                 not the server's server_name ('knock-xdp status' shows it), knock NAME={target}"
            );
        }
    }
    Ok(Some(state))
}

/// The worst outcome of several knocks, for the exit status.
#[derive(Default)]
struct Worst {
    state: Option<PortState>,
    error: bool,
}

impl Worst {
    fn add(&mut self, state: Option<PortState>) {
        // The exit codes rise with the harm: 0 open, 3 closed (the door
        // opened, nothing listens), 4 filtered.
        let rank = |s: Option<PortState>| s.map_or(0, PortState::exit_code);
        if rank(state) > rank(self.state) {
            self.state = state;
        }
    }

    fn exit_code(&self) -> ExitCode {
        if self.error {
            ExitCode::FAILURE
        } else {
            self.state.map_or(ExitCode::SUCCESS, |s| ExitCode::from(s.exit_code()))
        }
    }
}

/// `allow CIDR --permanent`: through the daemon, or into the state file.
fn allow_network(state: &StateDir, net: Cidr) -> Result<()> {
    match control::connect(state) {
        Ok(stream) => print_changed(control::send(stream, &Request::AllowNet { net })?),
        Err(Unreachable::Other(err)) => return Err(err),
        Err(Unreachable::NotRunning) => {
            edit_offline(state, |saved| {
                saved.allow_nets.insert(net);
                Ok(())
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
fn revoke(state: &StateDir, target: Cidr) -> Result<()> {
    match control::connect(state) {
        Ok(stream) => print_changed(control::send(stream, &Request::Revoke { target })?),
        Err(Unreachable::Other(err)) => return Err(err),
        Err(Unreachable::NotRunning) => {
            if !state.path().exists() || !state.load()?.allow_nets.contains(&target) {
                return control::request::<Changed>(state, &Request::Revoke { target }).map(drop);
            }
            edit_offline(state, |saved| {
                saved.allow_nets.remove(&target);
                Ok(())
            })?;
            audit::append_or_warn(state, &audit::Record::now("revoked", target.to_string()));
            println!("{target} is no longer always allowed");
        }
    }
    Ok(())
}

/// Changes the persisted state while no daemon runs (holding its lock).
fn edit_offline(state: &StateDir, edit: impl FnOnce(&mut State) -> Result<()>) -> Result<()> {
    let Some(_lock) = lock_offline(state)? else {
        bail!("the knock-xdp daemon is starting or stopping; try again");
    };
    let mut saved = state.load()?;
    edit(&mut saved)?;
    state.save(&saved).context("cannot persist the change")
}

/// Through the daemon when it runs; otherwise removes what a killed daemon
/// left pinned (which detaches its program).
fn detach(state: &StateDir, iface: Option<String>) -> Result<()> {
    match control::connect(state) {
        Ok(stream) => {
            let changed: Changed = control::send(stream, &Request::Detach { iface })?;
            if changed.stopping {
                // The daemon removes its pins as it exits; wait for that.
                wait_until_stopped(state)?;
            }
            println!("{}", changed.message);
            Ok(())
        }
        Err(Unreachable::Other(err)) => Err(err),
        Err(Unreachable::NotRunning) => {
            let Some(_lock) = lock_offline(state)? else {
                bail!("the knock-xdp daemon is starting or stopping; try again");
            };
            loader::ensure_bpffs()?;
            let pin_dir = loader::pin_dir(state)?;
            if iface.is_some() && !loader::pinned_link_exists(&pin_dir) {
                bail!("knock-xdp is not attached (state directory {})", state.path().display());
            }
            let detached = loader::remove_pins(&pin_dir)?;
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
    }
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

/// The state directory's lock for commands that edit it without a daemon.
fn lock_offline(state: &StateDir) -> Result<Option<std::fs::File>> {
    if !state.path().exists() {
        state.create()?;
    }
    state.try_lock()
}

/// protect/unprotect: through the daemon when it runs, else straight into
/// the state file (applied at the next start).
fn change_protected(state: &StateDir, specs: &[PortSpec], protect: bool) -> Result<()> {
    let requested = ports::expand_all(specs);
    let list: Vec<ProtoPort> = requested.iter().copied().collect();
    let request =
        if protect { Request::Protect { ports: list } } else { Request::Unprotect { ports: list } };
    match control::connect(state) {
        Ok(stream) => {
            print_changed(control::send(stream, &request)?);
            Ok(())
        }
        Err(Unreachable::Other(err)) => Err(err),
        Err(Unreachable::NotRunning) => {
            edit_offline(state, |saved| {
                for port in &requested {
                    if protect {
                        saved.protected.insert(*port);
                    } else {
                        saved.protected.remove(port);
                    }
                }
                Ok(())
            })?;
            let verb = if protect { "protected" } else { "unprotected" };
            println!(
                "{verb} {} (the daemon is not running: takes effect at the next 'knock-xdp attach')",
                ports::join(&requested)
            );
            Ok(())
        }
    }
}

fn print_changed(changed: Changed) {
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
