//! `knock`, `sequence` and `check`: the client side, run where the knocks
//! start (no root, no state directory).

use std::{path::PathBuf, process::ExitCode, time::Duration, time::SystemTime};

use anyhow::{Context as _, Result, bail};
use knock_common::server_id::ServerId;

use super::parse_server_name;
use crate::{
    duration::parse_duration,
    ports,
    probe::{self, PortState},
    profile::{Profile, UnlockMode},
    prompt::read_secret,
    sender::{self, record::KnockRecord},
};

#[derive(Debug, clap::Args)]
pub struct KnockArgs {
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
}

#[derive(Debug, clap::Args)]
pub struct SequenceArgs {
    #[command(flatten)]
    profile: ProfileArgs,
    /// Fleet profiles: the server (its server_name) the sequence is for.
    #[arg(long, value_name = "NAME", value_parser = parse_server_name)]
    server: Option<ServerId>,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Address or host name.
    host: String,
    #[arg(value_parser = parse_port_arg)]
    port: u16,
    /// How long to wait for an answer.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "2s")]
    timeout: Duration,
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
        Some(UnlockMode::Totp) => {
            let code = unlock
                .code
                .context("this is an authenticator profile: give the current code with --code")?;
            let pin = read_secret(unlock.pin_file.as_deref(), "PIN", false)?;
            profile.unlock_totp(code, &pin);
        }
        // A random secret is in the profile itself.
        Some(UnlockMode::Random) | None => {}
    }
    Ok(profile)
}

fn parse_port_arg(text: &str) -> Result<u16, String> {
    ports::parse_port(text)
}

/// Knocks on each host in turn; the exit status is the worst outcome.
pub(super) fn knock(args: KnockArgs) -> Result<ExitCode> {
    let KnockArgs { hosts, profile: args, delay, check, retries, slots_dir, admit } = args;
    let profile = load_profile(&args)?;
    let mut record = KnockRecord::open(slots_dir.as_deref(), &profile);
    let options =
        sender::Options { delay: Duration::from_millis(delay), check, retries, at: args.at, admit };
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
    Ok(worst.exit_code())
}

pub(super) fn sequence(args: SequenceArgs) -> Result<()> {
    let SequenceArgs { profile: args, server } = args;
    let profile = load_profile(&args)?;
    if profile.is_fleet() && server.is_none() {
        bail!(
            "this is a fleet profile: each server has its own sequence; name the server \
             with --server NAME (its server_name)"
        );
    }
    let (_, steps) = sender::steps_at(&profile, args.at, server.as_ref())?;
    println!("{}", sender::sequence_line(&steps));
    Ok(())
}

pub(super) fn check(args: CheckArgs) -> Result<ExitCode> {
    let (addr, port_state) = probe::check(&args.host, args.port, args.timeout)?;
    println!("{addr} {}", port_state.as_str());
    Ok(ExitCode::from(port_state.exit_code()))
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
