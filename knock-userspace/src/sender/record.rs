//! What the knock client remembers between runs: for each profile, the slots
//! whose sequences it lately sent, per server: its address, or for a fleet
//! profile (whose sequences differ per server) the server's identity, so
//! the same server reached at two addresses is one entry.
//!
//! A rotating sequence opens the door once (the server refuses it as a replay
//! afterwards), so a second knock in the same slot, from a new address, must
//! use another of the slots the server still accepts. The client learns that
//! it already used one only from this record.
//!
//! One small TOML file per profile, mode 0600, in `$XDG_STATE_HOME/knock-xdp`
//! (or `~/.local/state/knock-xdp`). The file is named after a hash of the
//! profile, so neither its name nor its content holds the secret; it holds
//! only slot numbers, which anyone can compute from the clock. Losing it
//! costs at most a retry, so it is never a reason to fail a knock: a file
//! that cannot be read or written gives one warning and the knock goes on.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, DirBuilder, OpenOptions},
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use knock_common::server_id::ServerId;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{
    profile::{Key, Knock, Profile},
    state::parse_toml,
};

/// Tells the hash of a profile's identity apart from any other use of SHA-256.
const IDENTITY_TAG: &[u8] = b"knock-xdp knock record v1\n";

/// The file form.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordFile {
    /// Server (address or identity) → slots sent to it that the server may
    /// still accept.
    #[serde(default)]
    sent: BTreeMap<String, BTreeSet<u64>>,
}

/// The slots one profile sent lately, and where they are kept.
#[derive(Debug)]
pub struct KnockRecord {
    /// `None` when nothing is remembered: static and authenticator profiles,
    /// or no place to keep the file.
    path: Option<PathBuf>,
    sent: BTreeMap<ServerId, BTreeSet<u64>>,
    warned: bool,
}

impl KnockRecord {
    /// A record that remembers nothing.
    pub fn none() -> Self {
        Self { path: None, sent: BTreeMap::new(), warned: false }
    }

    /// The record of `profile` in `dir` (the default place when `None`).
    ///
    /// Only rotating profiles with a secret of their own have one: a static
    /// sequence is not single-use, and an authenticator client holds the code
    /// of a single step, so it has no other slot to turn to.
    pub fn open(dir: Option<&Path>, profile: &Profile) -> Self {
        let remembers = matches!(
            &profile.knock,
            Knock::Rotating { key: Key::Random(_) | Key::Passphrase { .. }, .. }
        );
        if !remembers {
            return Self::none();
        }
        let mut record = Self::none();
        let Some(dir) = dir.map(Path::to_path_buf).or_else(default_dir) else {
            record.warn(&anyhow::anyhow!("no home directory (set XDG_STATE_HOME or HOME)"));
            return record;
        };
        let path = dir.join(file_name(profile));
        match read(&path) {
            Ok(sent) => record.sent = sent,
            Err(err) => record.warn(&err),
        }
        record.path = Some(path);
        record
    }

    /// Was `slot` sent to `server`?
    pub fn sent_to(&self, server: &ServerId, slot: u64) -> bool {
        self.sent.get(server).is_some_and(|slots| slots.contains(&slot))
    }

    /// Was `slot` sent to some other server?
    pub fn sent_elsewhere(&self, server: &ServerId, slot: u64) -> bool {
        self.sent.iter().any(|(other, slots)| other != server && slots.contains(&slot))
    }

    /// Remembers that `slot` went to `server` (for the rest of this run even
    /// when there is no file), forgetting slots below `oldest_live` (no
    /// server accepts them any more), and saves the record.
    pub fn remember(&mut self, server: &ServerId, slot: u64, oldest_live: u64) {
        self.update(|sent| {
            sent.entry(*server).or_default().insert(slot);
            for slots in sent.values_mut() {
                slots.retain(|&s| s >= oldest_live);
            }
        });
    }

    /// Forgets that `slots` went to `server`, and saves the record.
    pub fn forget(&mut self, server: &ServerId, slots: &[u64]) {
        self.update(|sent| {
            if let Some(sent) = sent.get_mut(server) {
                sent.retain(|s| !slots.contains(s));
            }
        });
    }

    /// Applies `change` to the record and saves it. The file is read again
    /// first, so a knock running at the same time loses nothing but what it
    /// wrote in the same instant.
    fn update(&mut self, change: impl Fn(&mut BTreeMap<ServerId, BTreeSet<u64>>)) {
        change(&mut self.sent);
        let Some(path) = self.path.clone() else {
            return;
        };
        if let Ok(on_disk) = read(&path) {
            for (server, slots) in on_disk {
                self.sent.entry(server).or_default().extend(slots);
            }
            change(&mut self.sent);
        }
        self.sent.retain(|_, slots| !slots.is_empty());
        if let Err(err) = write(&path, &self.sent) {
            self.warn(&err);
        }
    }

    /// One warning per run: the knock itself goes on.
    fn warn(&mut self, err: &anyhow::Error) {
        if !self.warned {
            self.warned = true;
            tracing::warn!(
                "cannot remember the slots this profile used: {err:#} (the knock goes on; a second knock in this slot may need --check to retry)"
            );
        }
    }
}

/// `$XDG_STATE_HOME/knock-xdp`, else `$HOME/.local/state/knock-xdp`, else the
/// same under the home directory of the user's passwd entry (root under
/// systemd, cron). Root ignores a HOME it does not own (`sudo` may keep the
/// invoking user's), so it never leaves root-owned files in a user's home.
pub fn default_dir() -> Option<PathBuf> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let usable = |path: &Path| {
        path.is_absolute() && (!root || fs::metadata(path).is_ok_and(|m| m.uid() == 0))
    };
    let env = |name| std::env::var_os(name).map(PathBuf::from).filter(|p| usable(p));
    if let Some(state) = env("XDG_STATE_HOME") {
        return Some(state.join("knock-xdp"));
    }
    let home = env("HOME").or_else(passwd_home).filter(|p| p.is_absolute())?;
    Some(home.join(".local/state/knock-xdp"))
}

/// The home directory in the passwd entry of the effective user.
fn passwd_home() -> Option<PathBuf> {
    use std::{ffi::CStr, os::unix::ffi::OsStrExt as _};
    let mut buf = vec![0u8; 4096];
    // SAFETY: all-zero is a valid passwd to be filled in.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: valid pointers; buf outlives every use of the strings in entry.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::geteuid(),
            &mut entry,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() || entry.pw_dir.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so pw_dir is a NUL-terminated string in buf.
    let dir = unsafe { CStr::from_ptr(entry.pw_dir) };
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes())))
}

/// The file name: a hash of everything the client profile holds. The input
/// includes a random profile's secret, but 128 bits of its SHA-256 tell
/// nothing about it; a passphrase profile is told apart by its salt.
fn file_name(profile: &Profile) -> String {
    let identity = toml::to_string(&profile.to_client_file()).unwrap_or_default();
    let hash = Sha256::new().chain_update(IDENTITY_TAG).chain_update(identity).finalize();
    format!("{}.toml", crate::profile::to_hex(&hash[..16]))
}

fn read(path: &Path) -> Result<BTreeMap<ServerId, BTreeSet<u64>>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    let file: RecordFile = parse_toml(&text, path)?;
    // An entry that does not parse is skipped: it can only cost a retry.
    // An address written by an earlier version reads as the same key.
    Ok(file
        .sent
        .into_iter()
        .filter_map(|(server, slots)| Some((ServerId::parse(&server).ok()?, slots)))
        .collect())
}

/// Writes the whole file under a temporary name, then renames it over the old
/// one: readers see the old file or the new one, never a part.
fn write(path: &Path, sent: &BTreeMap<ServerId, BTreeSet<u64>>) -> Result<()> {
    let dir = path.parent().context("the record has no directory")?;
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let file = RecordFile {
        sent: sent.iter().map(|(server, slots)| (server.to_string(), slots.clone())).collect(),
    };
    let text = format!(
        "# knock-xdp: the slots this profile knocked with lately, per server; no secret.\n{}",
        toml::to_string(&file).context("cannot serialise the record")?
    );
    let name = path.file_name().context("the record has no file name")?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        // create_new: never follow a link someone left under the temporary name.
        let mut out = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::{ports::Proto, profile::parse_static};

    fn rotating(secret: u8) -> Profile {
        Profile {
            name: "laptop".into(),
            knock: Knock::Rotating {
                key: Key::Random([secret; 32]),
                proto: Proto::Tcp,
                length: 4,
                slot_secs: 30,
                ports: (61000, 65535),
                exclude: vec![],
                fleet: false,
            },
        }
    }

    fn id(text: &str) -> ServerId {
        ServerId::parse(text).unwrap()
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("knock-record-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn the_record_survives_runs_and_forgets_dead_slots() {
        let dir = temp_dir("runs");
        let (a, b) = (&id("192.0.2.1"), &id("2001:db8::1"));
        let profile = rotating(7);
        let mut record = KnockRecord::open(Some(&dir), &profile);
        assert!(!record.sent_to(a, 100));
        record.remember(a, 100, 99);
        record.remember(b, 101, 99);

        let mut again = KnockRecord::open(Some(&dir), &profile);
        assert!(again.sent_to(a, 100) && !again.sent_to(a, 101));
        assert!(again.sent_elsewhere(b, 100) && !again.sent_elsewhere(a, 100));
        // Slots below the oldest live one go; a server with none left goes.
        again.remember(a, 103, 101);
        let mut third = KnockRecord::open(Some(&dir), &profile);
        assert!(!third.sent_to(a, 100) && third.sent_to(a, 103) && third.sent_to(b, 101));
        third.remember(a, 102, 101);
        third.forget(a, &[102, 101]);
        assert!(!third.sent_to(a, 102) && third.sent_to(a, 103) && third.sent_to(b, 101));
        let fourth = KnockRecord::open(Some(&dir), &profile);
        assert!(!fourth.sent_to(a, 102) && fourth.sent_to(a, 103) && fourth.sent_to(b, 101));

        // One file, private, and the secret is neither in its name nor in it.
        let files: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let secret = crate::profile::to_hex(&[7; 32]);
        let text = fs::read_to_string(&files[0]).unwrap();
        assert!(!files[0].to_string_lossy().contains(&secret[..8]) && !text.contains(&secret[..8]));
        assert!(text.contains("103"), "{text}");
        assert_eq!(fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777, 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn profiles_have_records_of_their_own() {
        let dir = temp_dir("own");
        let a = &id("192.0.2.1");
        KnockRecord::open(Some(&dir), &rotating(1)).remember(a, 5, 0);
        assert!(!KnockRecord::open(Some(&dir), &rotating(2)).sent_to(a, 5));
        assert!(KnockRecord::open(Some(&dir), &rotating(1)).sent_to(a, 5));
        // Static and authenticator profiles keep nothing.
        let statik = Profile {
            name: "legacy".into(),
            knock: Knock::Static { steps: parse_static("7000,8000").unwrap() },
        };
        let mut record = KnockRecord::open(Some(&dir), &statik);
        record.remember(a, 6, 0);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fleet_servers_are_kept_by_identity_and_old_records_still_read() {
        let dir = temp_dir("fleet");
        let mut profile = rotating(4);
        if let Knock::Rotating { fleet, .. } = &mut profile.knock {
            *fleet = true;
        }
        let (web1, web2) = (&id("web1.example.org"), &id("web2.example.org"));
        let mut record = KnockRecord::open(Some(&dir), &profile);
        record.remember(web1, 100, 99);
        record.remember(web2, 100, 99);
        let again = KnockRecord::open(Some(&dir), &profile);
        assert!(again.sent_to(web1, 100) && again.sent_to(web2, 100));
        assert!(again.sent_to(&id("WEB1.example.org."), 100), "the same server, typed otherwise");
        assert!(!again.sent_to(&id("web3.example.org"), 100));
        let text = fs::read_to_string(dir.join(file_name(&profile))).unwrap();
        assert!(text.contains("\"web1.example.org\" = [100]"), "{text}");

        // A record written by an earlier version, with address keys (one
        // in a spelling this version would not write), and a key that is
        // neither address nor name, which is skipped.
        let plain = rotating(5);
        fs::write(
            dir.join(file_name(&plain)),
            "[sent]\n\"192.0.2.1\" = [7]\n\"2001:DB8::1\" = [8]\n\"bad key!\" = [9]\n",
        )
        .unwrap();
        let old = KnockRecord::open(Some(&dir), &plain);
        assert!(!old.warned);
        assert!(old.sent_to(&id("192.0.2.1"), 7) && old.sent_to(&id("2001:db8::1"), 8));
        assert_eq!(old.sent.len(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_broken_or_unwritable_record_costs_nothing_but_a_warning() {
        let dir = temp_dir("broken");
        let profile = rotating(3);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(file_name(&profile)), "not = [toml").unwrap();
        let a = &id("192.0.2.1");
        let mut record = KnockRecord::open(Some(&dir), &profile);
        assert!(record.warned && !record.sent_to(a, 5));
        // The next write replaces the broken file.
        record.remember(a, 5, 0);
        assert!(KnockRecord::open(Some(&dir), &profile).sent_to(a, 5));
        fs::remove_dir_all(&dir).unwrap();

        let mut nowhere = KnockRecord::open(Some(Path::new("/dev/null/knock")), &profile);
        nowhere.remember(a, 5, 0);
        assert!(nowhere.warned && nowhere.sent_to(a, 5), "still remembered for this run");
    }
}
