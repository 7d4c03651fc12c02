//! The server's clients: one profile file each in `<state-dir>/clients/`,
//! mode 0600, with the client's stable `id` added.

use std::{
    fs,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use knock_common::maps::Limits;

use crate::{
    profile::{Profile, ProfileFile, check_name},
    state::{StateDir, parse_toml, write_atomically},
};

/// A client as the server knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    /// Stable for the client's life; keys single-use records in the kernel.
    pub id: u32,
    /// Its place in the kernel's tables (below the configured number of
    /// clients), stable for the client's life too.
    pub index: u32,
    pub profile: Profile,
}

pub struct ClientStore {
    dir: PathBuf,
}

impl ClientStore {
    pub fn new(state: &StateDir) -> Self {
        Self { dir: state.path().join("clients") }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.toml"))
    }

    /// Every client, sorted by name. A broken file is an error naming it.
    pub fn load(&self) -> Result<Vec<Client>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => {
                return Err(err).with_context(|| format!("cannot read {}", self.dir.display()));
            }
        };
        let mut clients = Vec::new();
        for entry in entries {
            let path = entry.with_context(|| format!("cannot read {}", self.dir.display()))?.path();
            if path.extension().is_some_and(|e| e == "toml") {
                clients.push(read_client(&path)?);
            }
        }
        clients.sort_by(|a, b| a.profile.name.cmp(&b.profile.name));
        // Two files claiming one index (edited by hand): the second is refused.
        let mut seen = std::collections::BTreeSet::new();
        for client in &clients {
            if !seen.insert(client.index) {
                bail!(
                    "clients share index {}: {} (remove and add it again)",
                    client.index,
                    client.profile.name
                );
            }
        }
        Ok(clients)
    }

    /// Stores a new client; refuses a taken name or a full house (`limit`
    /// clients, the config file's `[limits] clients`).
    pub fn add(&self, profile: Profile, limit: u32) -> Result<Client> {
        check_name(&profile.name)?;
        let existing = self.load()?;
        if existing.iter().any(|c| c.profile.name == profile.name) {
            bail!("client '{}' exists already (remove it first)", profile.name);
        }
        if existing.len() >= limit as usize {
            bail!(
                "knock-xdp follows at most {limit} clients (raise `clients` in the config file's \
                 [limits], then detach and attach), or remove one first"
            );
        }
        let id = loop {
            let bytes = crate::profile::random_secret()?;
            let id = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            if id != 0 && !existing.iter().any(|c| c.id == id) {
                break id;
            }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let index = (0..limit)
            .find(|i| !existing.iter().any(|c| c.index == *i))
            .expect("fewer clients than the limit");
        let mut profile = profile;
        // An SPA client's datagrams name its index.
        if let crate::profile::Knock::Spa { index: named, .. } = &mut profile.knock {
            *named = index;
        }
        let client = Client { id, index, profile };
        let mut file = client.profile.to_file();
        file.id = Some(id);
        file.index = Some(index);
        let body = toml::to_string(&file).context("cannot serialise the client")?;
        let text = format!("# knock-xdp client \"{}\" (server copy)\n{body}", client.profile.name);
        write_atomically(&self.path(&client.profile.name), text.as_bytes())?;
        Ok(client)
    }

    /// Removes a client; an error when there is none by that name.
    pub fn remove(&self, name: &str) -> Result<Client> {
        check_name(name)?;
        let path = self.path(name);
        if !path.exists() {
            bail!("no client named '{name}'");
        }
        let client = read_client(&path)?;
        fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        Ok(client)
    }

    pub fn get(&self, name: &str) -> Result<Client> {
        check_name(name)?;
        let path = self.path(name);
        if !path.exists() {
            bail!("no client named '{name}'");
        }
        read_client(&path)
    }
}

fn read_client(path: &Path) -> Result<Client> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: ProfileFile = parse_toml(&text, path)?;
    let id = file.id.with_context(|| format!("{}: the client has no id", path.display()))?;
    let index =
        file.index.with_context(|| format!("{}: the client has no index", path.display()))?;
    if index >= Limits::MAX_CLIENTS {
        bail!("{}: index {index} is out of range (0-{})", path.display(), Limits::MAX_CLIENTS - 1);
    }
    let profile =
        Profile::from_file(&file).with_context(|| format!("invalid client {}", path.display()))?;
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    if stem != profile.name {
        bail!(
            "{}: the file name does not match the client name '{}'",
            path.display(),
            profile.name
        );
    }
    Ok(Client { id, index, profile })
}
