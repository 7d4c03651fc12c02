//! The audit trail: every door opening and every refusal, one JSON line each
//! in `<state-dir>/audit.jsonl`, read back by `knock-xdp log`.

use std::{
    fs::{self, OpenOptions},
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::PathBuf,
    time::SystemTime,
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::state::StateDir;

/// Past this size the file is rotated to `audit.jsonl.1` (one generation kept).
const MAX_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// RFC 3339, UTC.
    pub time: String,
    /// `opened`, `replay`, `reset`, `timeout`, `stale`, `allow_full`, or
    /// `unlogged` (refusals over the logging budget, counted).
    pub event: String,
    /// The client, when the kernel could tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    pub source: String,
    /// The slot of the sequence (absent for static sequences and unknown ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u64>,
    /// For openings: how long the source may open new connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_secs: Option<u64>,
    /// Knocks matched when it happened.
    pub step: u32,
    /// For `unlogged`: how many refusals went unrecorded in the last second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

impl Record {
    pub fn now(event: &str, source: String) -> Self {
        Self {
            time: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            event: event.to_owned(),
            client: None,
            source,
            slot: None,
            open_secs: None,
            step: 0,
            count: None,
        }
    }
}

fn path(state: &StateDir) -> PathBuf {
    state.path().join("audit.jsonl")
}

/// Appends a record (the daemon calls this for every event but progress).
pub fn append(state: &StateDir, record: &Record) -> Result<()> {
    let path = path(state);
    if fs::symlink_metadata(&path).is_ok_and(|m| m.len() > MAX_BYTES) {
        fs::rename(&path, path.with_extension("jsonl.1")).context("cannot rotate the audit log")?;
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

/// The most recent records, oldest first, optionally of one client.
pub fn recent(state: &StateDir, client: Option<&str>, count: usize) -> Result<Vec<Record>> {
    let path = path(state);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    // A line cut short by a crash is skipped, not fatal.
    let records: Vec<Record> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<Record>(line).ok())
        .filter(|r| client.is_none_or(|c| r.client.as_deref() == Some(c)))
        .collect();
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
        let detail = match (r.event.as_str(), r.open_secs) {
            ("opened", Some(secs)) => format!("open for {secs}s"),
            ("unlogged", _) => format!("{} more refusals", r.count.unwrap_or(0)),
            _ => format!("after {} knocks", r.step),
        };
        let slot = r.slot.map_or_else(String::new, |s| format!(" slot {s}"));
        println!("{}  {:<10} {:<16} {:<39} {detail}{slot}", r.time, r.event, client, r.source);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_at_the_audit_file_is_never_followed() {
        let root = std::env::temp_dir().join(format!("knock-audit-link-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let state = StateDir::new(&root);
        state.create().unwrap();
        let target = root.with_extension("target");
        fs::write(&target, "precious\n").unwrap();
        std::os::unix::fs::symlink(&target, path(&state)).unwrap();
        let err = format!(
            "{:#}",
            append(&state, &Record::now("opened", "192.0.2.1".into())).unwrap_err()
        );
        assert!(err.contains("audit.jsonl") && err.contains("symbolic link"), "{err}");
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n");
        fs::remove_file(target).unwrap();
        fs::remove_dir_all(root).unwrap();
    }
}
