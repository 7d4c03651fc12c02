//! `client add|list|show|remove`: the clients directory, profiles, URIs and
//! QR codes. A running daemon is told to reload after every change.

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::offline::ask_daemon;
use crate::{
    audit,
    clients::ClientStore,
    config::Config,
    control::{Changed, Request},
    duration::{format_duration, parse_duration},
    footguns,
    ports::{Proto, ProtoPort},
    procnet,
    profile::{self, Key, Knock, Profile},
    prompt::{check_pin_strength, read_secret},
    qr,
    state::StateDir,
};
use knock_common::secret::{
    self as kdf, DEFAULT_PASSPHRASE_COST, DEFAULT_PIN_COST, SALT_LEN, TOTP_SECRET_LEN,
};

#[derive(Debug, clap::Subcommand)]
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

pub(super) fn run(state: &StateDir, config: Option<&Path>, command: ClientCommand) -> Result<()> {
    let store = ClientStore::new(state);
    match command {
        ClientCommand::Add {
            name,
            length,
            slot,
            ports,
            proto,
            exclude,
            static_sequence,
            spa,
            allow_named_address,
            fleet,
            totp,
            pin_file,
            passphrase_file,
            cost,
            qr,
            profile_out,
            force,
        } => {
            profile::check_name(&name)?;
            if let Some(path) = &profile_out
                && path.exists()
            {
                bail!("{} exists already; not overwriting it", path.display());
            }
            if store.get(&name).is_ok() {
                bail!("client '{name}' exists already (remove it first)");
            }
            let exclude = exclude.map(|PortList(ports)| ports).unwrap_or_default();
            // Where its knocks will fall, checked before any secret is asked for.
            let knocks_at = Profile {
                name: name.clone(),
                knock: match &static_sequence {
                    Some(StaticSequence(steps)) => Knock::Static { steps: steps.clone() },
                    // Datagrams, so its range is checked against UDP ports.
                    None if spa => Knock::Spa {
                        key: Key::Random([0; 32]),
                        index: 0,
                        ports,
                        may_name_address: allow_named_address,
                    },
                    None => Knock::Rotating {
                        key: Key::Random([0; 32]),
                        proto,
                        length,
                        slot_secs: kdf::TOTP_STEP_SECS,
                        ports,
                        exclude: exclude.clone(),
                        fleet,
                    },
                },
            };
            footguns::knock_space_clear_of_ephemeral(&knocks_at)?;
            let mut protected =
                if state.path().exists() { state.load()?.protected } else { Default::default() };
            protected.extend(Config::load(config)?.protected);
            let refusals =
                footguns::client_refusals(&knocks_at, &protected, &procnet::listening_ports());
            if !force {
                footguns::force_or_refuse(state, false, &name, Some(&name), &refusals)?;
            }
            let knock = match static_sequence {
                Some(StaticSequence(steps)) => Knock::Static { steps },
                None => {
                    if slot.subsec_nanos() != 0 || slot.as_secs() > 86_400 {
                        bail!("--slot must be whole seconds, at most 1d");
                    }
                    let key = if totp {
                        let pin = read_secret(pin_file.as_deref(), "PIN for the new client", true)?;
                        let cost = cost.unwrap_or(DEFAULT_PIN_COST);
                        check_pin_strength(&pin, cost)?;
                        let salt: [u8; SALT_LEN] = profile::random_bytes()?;
                        let totp_secret = profile::random_bytes::<TOTP_SECRET_LEN>()?.to_vec();
                        let pin_key = Some(kdf::pin_key(&pin, &salt, cost));
                        Key::Totp {
                            salt,
                            cost,
                            pin_key,
                            totp_secret: Some(totp_secret),
                            code: None,
                        }
                    } else if passphrase_file.is_some() || cost.is_some() {
                        let passphrase = read_secret(
                            passphrase_file.as_deref(),
                            "passphrase for the new client",
                            true,
                        )?;
                        let salt: [u8; SALT_LEN] = profile::random_bytes()?;
                        let cost = cost.unwrap_or(DEFAULT_PASSPHRASE_COST);
                        Key::Passphrase {
                            salt,
                            cost,
                            secret: Some(kdf::passphrase_secret(&passphrase, &salt, cost)),
                        }
                    } else {
                        Key::Random(profile::random_secret()?)
                    };
                    let slot_secs = if totp { kdf::TOTP_STEP_SECS } else { slot.as_secs() as u32 };
                    if spa {
                        // The store gives the index.
                        Knock::Spa { key, index: 0, ports, may_name_address: allow_named_address }
                    } else {
                        Knock::Rotating { key, proto, length, slot_secs, ports, exclude, fleet }
                    }
                }
            };
            // Round-trip through the file form: the same validation as a read.
            let profile = Profile::from_file(&Profile { name, knock }.to_file())?;
            state.create()?;
            let name = &profile.name;
            footguns::force_or_refuse(state, force, name, Some(name), &refusals)?;
            let client = store.add(profile, Config::load(config)?.limits.clients)?;
            let text = client.profile.to_toml()?;
            match &profile_out {
                Some(path) => {
                    if let Err(err) = write_private(path, &text) {
                        let _ = store.remove(&client.profile.name);
                        return Err(err);
                    }
                    eprintln!("profile written to {}", path.display());
                }
                None => print!("{text}"),
            }
            if qr {
                println!("{}", client.profile.to_uri()?);
                print!("{}", qr::render(&client.profile.to_uri()?)?);
            }
            if let Some(otpauth) = otpauth_uri(&client.profile) {
                println!("add this to an authenticator app (TOTP, 6 digits, 30 s):");
                println!("{otpauth}");
                print!("{}", qr::render(&otpauth)?);
            }
            notify_daemon(state)?;
            eprintln!("client {} added ({})", client.profile.name, describe(&client.profile));
        }
        ClientCommand::List { json } => {
            let clients = store.load()?;
            if json {
                let list: Vec<serde_json::Value> =
                    clients.iter().map(|c| public_view(&c.profile)).collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if clients.is_empty() {
                println!("no clients (add one with 'knock-xdp client add NAME')");
            } else {
                for c in &clients {
                    println!("{:<20} {}", c.profile.name, describe(&c.profile));
                }
            }
        }
        ClientCommand::Show { name, reveal, qr, json } => {
            let client = store.get(&name)?;
            if qr && !reveal {
                bail!("the QR code holds the profile's secret: add --reveal");
            }
            if json {
                let mut view = public_view(&client.profile);
                if reveal {
                    view["uri"] = client.profile.to_uri()?.into();
                }
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                println!("{:<20} {}", client.profile.name, describe(&client.profile));
                if reveal {
                    println!("{}", client.profile.to_uri()?);
                    if let Some(otpauth) = otpauth_uri(&client.profile) {
                        println!("{otpauth}");
                    }
                } else {
                    println!("(the secret stays hidden; --reveal prints the profile URI)");
                }
            }
            if qr {
                print!("{}", qr::render(&client.profile.to_uri()?)?);
            }
        }
        ClientCommand::Remove { name } => {
            let client = store.remove(&name)?;
            // A running daemon records the removal with what it ended.
            let ended = notify_daemon(state)?.unwrap_or_else(|| {
                let mut record = audit::Record::now("client_removed", "-".to_owned());
                record.client = Some(client.profile.name.clone());
                audit::append_or_warn(state, &record);
                String::new()
            });
            println!("client {} removed{ended}", client.profile.name);
        }
    }
    Ok(())
}

/// What `client list --json` and `client show --json` show: never a secret.
fn public_view(profile: &Profile) -> serde_json::Value {
    let mut view = serde_json::to_value(profile.to_client_file()).unwrap_or_default();
    if let Some(map) = view.as_object_mut() {
        map.remove("secret");
        map.remove("totp_secret");
        map.remove("version");
        map.insert("kind".into(), profile.kind().into());
    }
    view
}

/// The `otpauth://` URI of an authenticator client (server side only).
fn otpauth_uri(profile: &Profile) -> Option<String> {
    let Knock::Rotating { key: Key::Totp { totp_secret: Some(secret), .. }, .. } = &profile.knock
    else {
        return None;
    };
    let mut buf = vec![0u8; kdf::base32_len(secret.len())];
    let secret = kdf::base32_encode(secret, &mut buf);
    Some(format!(
        "otpauth://totp/knock-xdp:{name}?secret={secret}&issuer=knock-xdp&algorithm=SHA1&digits=6&period={}",
        kdf::TOTP_STEP_SECS,
        name = profile.name,
    ))
}

/// Tells a running daemon to re-read the clients; nothing to do without one
/// (`None`). Returns a note for the user about what the daemon ended.
fn notify_daemon(state: &StateDir) -> Result<Option<String>> {
    let changed: Option<Changed> = ask_daemon(state, &Request::ReloadClients)?;
    Ok(changed.map(|changed| {
        if changed.message.is_empty() { String::new() } else { format!("; {}", changed.message) }
    }))
}

pub(super) fn describe(profile: &Profile) -> String {
    match &profile.knock {
        Knock::Rotating { key, proto, length, slot_secs, ports, fleet, .. } => {
            let how = match key {
                Key::Random(_) => "rotating",
                Key::Passphrase { .. } => "passphrase",
                Key::Totp { .. } => "authenticator",
            };
            format!(
                "{how}{}: {length} {proto} knocks from {}-{}, new every {}",
                if *fleet { ", fleet (its own sequences at every server)" } else { "" },
                ports.0,
                ports.1,
                format_duration(Duration::from_secs(u64::from(*slot_secs)))
            )
        }
        Knock::Static { steps } => format!("static: {}", profile::join_static(steps)),
        Knock::Spa { key, index, ports, may_name_address } => format!(
            "spa ({}), index {index}, UDP {}-{}{}",
            key.mode(),
            ports.0,
            ports.1,
            if *may_name_address { ", may name the address to admit" } else { "" }
        ),
    }
}

/// Creates `path` with mode 0600 and writes `text`.
fn write_private(path: &Path, text: &str) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}
