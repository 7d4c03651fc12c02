//! `client add|list|show|remove`: the clients directory, profiles, URIs and
//! QR codes. A running daemon is told to reload after every change.

use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _, path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};

use super::{ClientCommand, PortList, StaticSequence};
use crate::{
    audit, checks,
    clients::ClientStore,
    config::Config,
    control::{self, Changed, Request, Unreachable},
    duration::format_duration,
    procnet,
    profile::{self, Key, Knock, Profile},
    prompt::{check_pin_strength, read_secret},
    qr,
    state::StateDir,
};
use knock_common::secret::{
    self as kdf, DEFAULT_PASSPHRASE_COST, DEFAULT_PIN_COST, SALT_LEN, TOTP_SECRET_LEN,
};

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
            checks::knock_space_clear_of_ephemeral(&knocks_at)?;
            let mut protected =
                if state.path().exists() { state.load()?.protected } else { Default::default() };
            protected.extend(Config::load(config)?.protected);
            let refusals =
                checks::client_refusals(&knocks_at, &protected, &procnet::listening_ports());
            if !force {
                checks::force_or_refuse(state, false, &name, Some(&name), &refusals)?;
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
            checks::force_or_refuse(state, force, name, Some(name), &refusals)?;
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
    match control::connect(state) {
        Ok(stream) => {
            let changed: Changed = control::send(stream, &Request::ReloadClients)?;
            Ok(Some(if changed.message.is_empty() {
                String::new()
            } else {
                format!("; {}", changed.message)
            }))
        }
        Err(Unreachable::NotRunning) => Ok(None),
        Err(Unreachable::Other(err)) => Err(err),
    }
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
