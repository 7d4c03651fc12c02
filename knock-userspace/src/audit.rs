//! The audit trail, one JSON line per record, read back (both kinds merged
//! in time order) by `knock-xdp log`:
//!
//! ```text
//! <state-dir>/audit.jsonl     what changed who may enter: door openings, client
//!                             removals, revocations, changes forced past a refusal
//! <state-dir>/refusals.jsonl  refused knocks (replays, resets, timeouts, ...)
//! ```
//!
//! Refusals are what anybody can cause at will (a spoofed first knock and
//! any other packet is a reset), so they live in a file of their own: a
//! flood of them rotates only that file, never an opening out of the
//! trail. Each file is rotated to `<name>.1` past [`MAX_BYTES`], so each
//! keeps between 4 and 8 MiB; openings, removals and revocations are only
//! ever pushed out by newer ones of their own kind. Which file a record goes
//! to is decided by its event: [`KEPT_EVENTS`] go to the audit file, every
//! other event (new kinds of refusal included) to the refusals file.

use std::{
    fs::{self, OpenOptions},
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::state::StateDir;

/// Past this size a file is rotated to `<name>.1` (one generation kept).
const MAX_BYTES: u64 = 4 * 1024 * 1024;

/// Events that nobody can cause without a valid knock or root: they go to
/// `audit.jsonl`, which refusals never rotate.
pub const KEPT_EVENTS: [&str; 5] = ["opened", "spa_opened", "client_removed", "revoked", "forced"];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// RFC 3339, UTC, with milliseconds (so the two files merge in order).
    pub time: String,
    /// `opened`, `client_removed`, `revoked`, `forced`; refusals: `replay`,
    /// `reset`, `timeout`, `stale`, `allow_full`, or `unlogged` (refusals
    /// over the logging budget, counted).
    pub event: String,
    /// The client, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The source address (a network for a revoked one; `-` when none).
    pub source: String,
    /// The slot of the sequence (absent for static sequences and unknown ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u64>,
    /// For openings: how long the source may open new connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_secs: Option<u64>,
    /// Knocks matched when it happened.
    #[serde(default)]
    pub step: u32,
    /// For `unlogged`: how many refusals went unrecorded in the last second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// For `revoked` and `client_removed`: how many open flows ended, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows: Option<u64>,
    /// For `forced`: what was accepted, and the refusal it overrode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Record {
    pub fn now(event: &str, source: String) -> Self {
        Self {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            event: event.to_owned(),
            client: None,
            source,
            slot: None,
            open_secs: None,
            step: 0,
            count: None,
            flows: None,
            detail: None,
        }
    }

    /// Whether the record belongs in the audit file rather than the refusals.
    pub fn is_kept(&self) -> bool {
        KEPT_EVENTS.contains(&self.event.as_str())
    }
}

fn audit_path(state: &StateDir) -> PathBuf {
    state.path().join("audit.jsonl")
}

fn refusals_path(state: &StateDir) -> PathBuf {
    state.path().join("refusals.jsonl")
}

/// The rotated generation of `path`: `audit.jsonl.1`.
fn previous(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Appends a record to its file (the daemon calls this for every event but
/// progress; commands for removals, revocations and forced changes).
pub fn append(state: &StateDir, record: &Record) -> Result<()> {
    let path = if record.is_kept() { audit_path(state) } else { refusals_path(state) };
    if fs::symlink_metadata(&path).is_ok_and(|m| m.len() > MAX_BYTES) {
        fs::rename(&path, previous(&path))
            .with_context(|| format!("cannot rotate {}", path.display()))?;
    }
    let mut line = serde_json::to_string(record)?;
    line.push('\n');
    // O_NOFOLLOW: a symbolic link planted at the audit file's name is
    // refused, never followed (the daemon appends as root).
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|err| match err.raw_os_error() {
            Some(libc::ELOOP) => std::io::Error::other("it is a symbolic link: not following it"),
            _ => err,
        })
        .and_then(|mut file| file.write_all(line.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Appends, or logs a warning when the record cannot be written: for
/// records of a change that has already been made, which must not turn
/// into an error.
pub fn append_or_warn(state: &StateDir, record: &Record) {
    if let Err(err) = append(state, record) {
        tracing::warn!("audit trail: {err:#}");
    }
}

/// Every record of one file, oldest first; a missing file has none, and a
/// line cut short by a crash is skipped.
fn read(path: &Path) -> Result<Vec<Record>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    Ok(text.lines().filter_map(|line| serde_json::from_str::<Record>(line).ok()).collect())
}

/// The most recent records of both files, oldest first, optionally of one client.
pub fn recent(state: &StateDir, client: Option<&str>, count: usize) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    for path in [audit_path(state), refusals_path(state)] {
        records.extend(read(&previous(&path))?);
        records.extend(read(&path)?);
    }
    records.retain(|r| client.is_none_or(|c| r.client.as_deref() == Some(c)));
    // RFC 3339 times in UTC with a fixed format sort as text; the sort is
    // stable, so each file's own order holds within a millisecond. (Records
    // from before milliseconds were written have whole seconds, "...:05Z",
    // which sorts after "...:05.xxxZ" of the same second: close enough.)
    records.sort_by(|a, b| a.time.cmp(&b.time));
    let skip = records.len().saturating_sub(count);
    Ok(records.into_iter().skip(skip).collect())
}

/// `knock-xdp log`.
pub fn print(state: &StateDir, json: bool, client: Option<&str>, count: usize) -> Result<()> {
    let records = recent(state, client, count)?;
    if json {
        for record in &records {
            println!("{}", serde_json::to_string(record)?);
        }
        return Ok(());
    }
    if records.is_empty() {
        println!("no door openings or refusals recorded yet");
    }
    for r in &records {
        let client = r.client.as_deref().unwrap_or("-");
        let flows =
            |r: &Record| r.flows.map_or_else(String::new, |n| format!("{n} open flows ended"));
        let detail = match (r.event.as_str(), r.open_secs) {
            ("opened", Some(secs)) => format!("open for {secs}s"),
            ("unlogged", _) => format!("{} more refusals", r.count.unwrap_or(0)),
            ("client_removed" | "revoked", _) => flows(r),
            ("forced", _) => r.detail.clone().unwrap_or_default(),
            _ => format!("after {} knocks", r.step),
        };
        let slot = r.slot.map_or_else(String::new, |s| format!(" slot {s}"));
        println!("{}  {:<14} {:<16} {:<39} {detail}{slot}", r.time, r.event, client, r.source);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_state(name: &str) -> StateDir {
        let root = std::env::temp_dir().join(format!("knock-audit-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let state = StateDir::new(&root);
        state.create().unwrap();
        state
    }

    #[test]
    fn a_symlink_at_the_audit_file_is_never_followed() {
        let state = temp_state("link");
        let target = state.path().with_extension("target");
        fs::write(&target, "precious\n").unwrap();
        std::os::unix::fs::symlink(&target, audit_path(&state)).unwrap();
        let record = Record::now("opened", "192.0.2.1".into());
        let err = format!("{:#}", append(&state, &record).unwrap_err());
        assert!(err.contains("audit.jsonl") && err.contains("symbolic link"), "{err}");
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n");
        fs::remove_file(target).unwrap();
        fs::remove_dir_all(state.path()).unwrap();
    }

    #[test]
    fn refusals_rotate_their_own_file_and_never_an_opening() {
        let state = temp_state("rotate");
        let mut opened = Record::now("opened", "192.0.2.1".into());
        opened.client = Some("alice".into());
        append(&state, &opened).unwrap();
        // More than two generations of refusals.
        let mut reset = Record::now("reset", "198.51.100.7".into());
        reset.client = Some("alice".into());
        let line = serde_json::to_string(&reset).unwrap().len() as u64 + 1;
        for _ in 0..(2 * MAX_BYTES / line + 10) {
            append(&state, &reset).unwrap();
        }
        assert!(previous(&refusals_path(&state)).exists(), "the refusals never rotated");
        // Every reset carries one time; the removal comes strictly later.
        let mut removed = Record::now("client_removed", "-".into());
        while removed.time <= reset.time {
            removed = Record::now("client_removed", "-".into());
        }
        removed.client = Some("alice".into());
        append(&state, &removed).unwrap();

        let all = recent(&state, Some("alice"), usize::MAX).unwrap();
        assert_eq!(all.iter().filter(|r| r.event == "opened").count(), 1);
        assert_eq!(all.first().map(|r| r.event.as_str()), Some("opened"));
        assert!(all.windows(2).all(|w| w[0].time <= w[1].time), "not in time order");
        let last = recent(&state, None, 1).unwrap();
        assert_eq!(last[0].event, "client_removed");
        fs::remove_dir_all(state.path()).unwrap();
    }
}
