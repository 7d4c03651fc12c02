//! The state directory: everything one knock-xdp instance owns on disk.
//!
//! ```text
//! <state-dir>/state.toml    protected ports, persisted across restarts
//! <state-dir>/control.sock  the running daemon's control socket
//! <state-dir>/daemon.lock   held (flock) by the running daemon
//! ```
//!
//! The daemon runs as root and trusts what it finds here, so a directory
//! (or a file in it) that anybody but root could have written is refused
//! ([`StateDir::check`]), and files are created without following symbolic
//! links.

use std::{
    collections::BTreeSet,
    fs::{self, File, OpenOptions},
    io::Write as _,
    os::{
        fd::AsRawFd as _,
        unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::{nets::Cidr, ports::ProtoPort};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/knock-xdp";

/// What survives a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub protected: BTreeSet<ProtoPort>,
    /// Networks admitted without knocking (`allow CIDR --permanent`).
    pub allow_nets: BTreeSet<Cidr>,
}

/// The on-disk form of [`State`]: ports as `"22/tcp"` strings, readable and
/// editable by hand.
#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StateFile {
    #[serde(default)]
    protected: Vec<String>,
    #[serde(default)]
    allow: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn control_socket(&self) -> PathBuf {
        self.root.join("control.sock")
    }

    fn state_file(&self) -> PathBuf {
        self.root.join("state.toml")
    }

    fn lock_file(&self) -> PathBuf {
        self.root.join("daemon.lock")
    }

    /// Creates the directory (mode 0700: it holds the instance's secrets).
    pub fn create(&self) -> Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .with_context(|| format!("cannot create state directory {}", self.root.display()))
    }

    /// Refuses a state directory that someone other than root could have
    /// written, or that holds such a file (or a symbolic link): whoever can
    /// write there decides what the daemon, which runs as root, protects and
    /// admits, and a link planted at a file's name would make it write
    /// elsewhere. A missing directory is fine (it is created 0700). Checked
    /// before any command touches the directory, so a refusal changes nothing.
    pub fn check(&self) -> Result<()> {
        let meta = match fs::metadata(&self.root) {
            Ok(meta) => meta,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => {
                return Err(err).with_context(|| {
                    format!("cannot read state directory {}", self.root.display())
                });
            }
        };
        if !meta.is_dir() {
            bail!("state directory {} is not a directory", self.root.display());
        }
        only_root_writes(&self.root, &meta)?;
        for dir in [self.root.clone(), self.root.join("clients")] {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => {
                    return Err(err).with_context(|| format!("cannot read {}", dir.display()));
                }
            };
            for entry in entries {
                let path = entry.with_context(|| format!("cannot read {}", dir.display()))?.path();
                let meta = fs::symlink_metadata(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                if meta.file_type().is_symlink() {
                    bail!(
                        "{} is a symbolic link: knock-xdp follows none in its state directory; \
                         refusing to use it (remove the link)",
                        path.display()
                    );
                }
                only_root_writes(&path, &meta)?;
            }
        }
        Ok(())
    }

    /// A stable name for this instance, derived from the canonical path of
    /// its state directory, so two instances never share bpffs pins.
    pub fn instance_id(&self) -> Result<String> {
        let canonical = fs::canonicalize(&self.root)
            .with_context(|| format!("cannot resolve state directory {}", self.root.display()))?;
        Ok(format!("{:016x}", fnv1a(canonical.as_os_str().as_encoded_bytes())))
    }

    /// Reads the persisted state; a missing file is an empty state, a broken
    /// one an error naming the file and line (and the file is left as it is).
    pub fn load(&self) -> Result<State> {
        let path = self.state_file();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
        };
        let file: StateFile = parse_toml(&text, &path)?;
        let mut protected = BTreeSet::new();
        for entry in &file.protected {
            let port = entry
                .parse()
                .map_err(|err| anyhow::anyhow!("{}: protected: {err}", path.display()))?;
            protected.insert(port);
        }
        let mut allow_nets = BTreeSet::new();
        for entry in &file.allow {
            let net =
                entry.parse().map_err(|err| anyhow::anyhow!("{}: allow: {err}", path.display()))?;
            allow_nets.insert(net);
        }
        Ok(State { protected, allow_nets })
    }

    /// Writes the state atomically: a temp file, fsync, rename, fsync of the
    /// directory. A crash leaves either the old file or the new one.
    pub fn save(&self, state: &State) -> Result<()> {
        let file = StateFile {
            protected: state.protected.iter().map(ToString::to_string).collect(),
            allow: state.allow_nets.iter().map(ToString::to_string).collect(),
        };
        let text = toml::to_string(&file).context("cannot serialise state")?;
        let text = format!("# knock-xdp state; written by knock-xdp, safe to read.\n{text}");
        write_atomically(&self.state_file(), text.as_bytes())
    }

    /// Takes the daemon lock without waiting; `None` when another process holds it.
    pub fn try_lock(&self) -> Result<Option<File>> {
        let path = self.lock_file();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: a valid fd we own for the duration of the call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            Ok(Some(file))
        } else {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                Ok(None)
            } else {
                Err(err).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
    }
}

/// Parses TOML, naming the file and line on error, in one line.
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T> {
    toml::from_str(text).map_err(|err| {
        let line = err
            .span()
            .map(|span| text[..span.start].matches('\n').count() + 1)
            .map_or(String::new(), |line| format!(" line {line}"));
        anyhow::anyhow!("{}{line}: {}", path.display(), err.message().trim().replace('\n', ", "))
    })
}

/// Refuses `path` unless only root can write it: owned by root, and not
/// writable by group or others.
fn only_root_writes(path: &Path, meta: &fs::Metadata) -> Result<()> {
    let what = if meta.is_dir() { "directory" } else { "file" };
    if meta.uid() != 0 {
        bail!(
            "state {what} {} is owned by uid {}, not root: refusing to use it (chown root {})",
            path.display(),
            meta.uid(),
            path.display()
        );
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
            (true, true) => "group and others",
            (true, false) => "its group",
            _ => "others",
        };
        bail!(
            "state {what} {} is writable by {who} (mode {mode:04o}): refusing to use it (chmod go-w {})",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

/// Replaces `path` with `contents` so that readers only ever see a whole file.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path.parent().context("state file has no parent directory")?;
    let tmp = path.with_extension("tmp");
    let mut created = false;
    let result = (|| {
        let mut file = create_temp(&tmp)?;
        created = true;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() && created {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// Creates the temporary file afresh, with O_EXCL and O_NOFOLLOW: whatever
/// is planted at its name (a symbolic link to /etc/shadow, say) is never
/// followed, truncated or removed. A regular file a crash left there is
/// removed first; anything else is refused.
fn create_temp(tmp: &Path) -> std::io::Result<File> {
    let open = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(tmp)
    };
    match open() {
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            if !fs::symlink_metadata(tmp)?.file_type().is_file() {
                return Err(std::io::Error::other(format!(
                    "{} is in the way and is not a regular file (a symbolic link?): not following or replacing it",
                    tmp.display()
                )));
            }
            fs::remove_file(tmp)?;
            open()
        }
        other => other,
    }
}

/// 64-bit FNV-1a: tiny, and stable across Rust releases (unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Refuses to go on without root: every command here creates BPF objects,
/// attaches to interfaces or talks to the daemon's root-only socket.
pub fn require_root(command: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("knock-xdp {command} needs root (try: sudo knock-xdp {command} ...)");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
