//! bpffs and the pins in it: where an instance keeps them, mounting bpffs,
//! whether pins made here outlive this process, and removing them (which
//! detaches a program a killed daemon left behind).

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use crate::state::StateDir;

const BPFFS: &str = "/sys/fs/bpf";
/// `BPF_FS_MAGIC` from the kernel's `include/uapi/linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where an instance keeps its pins.
pub fn pin_dir(state: &StateDir) -> Result<PathBuf> {
    Ok(Path::new(BPFFS).join("knock-xdp").join(state.instance_id()?))
}

/// Mounts bpffs at /sys/fs/bpf when nothing is mounted there (fresh
/// machines, and the private /sys that `ip netns exec` sets up).
pub fn ensure_bpffs() -> Result<()> {
    if is_bpffs(Path::new(BPFFS)) {
        return Ok(());
    }
    let target = c"/sys/fs/bpf";
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(c"bpf".as_ptr(), target.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null())
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .context("bpffs is not mounted at /sys/fs/bpf and mounting it failed");
    }
    Ok(())
}

/// Why pins made here would die with this process, if they would.
///
/// `ip netns exec` runs every command in a mount namespace of its own with
/// a fresh /sys, where nothing is mounted at /sys/fs/bpf: the bpffs that
/// [`ensure_bpffs`] would mount there is private to the process, and its
/// pins go when the process does. A `kill -9` would then detach the
/// program, so fail-closed would be silently lost.
///
/// Pins outlive the process when the bpffs at /sys/fs/bpf is one PID 1 has
/// mounted too (same device; so under systemd's ProtectSystem, whose
/// namespace sees the host's bpffs), or, when none is mounted yet, when the
/// mount that /sys/fs/bpf lies on is in PID 1's namespace too (mount ids
/// are unique across namespaces). Only /proc/PID/mountinfo is read, which
/// needs no ptrace rights over PID 1 (/proc/1/ns/mnt would). If PID 1's
/// mounts cannot be read, nothing is refused.
pub fn private_bpffs() -> Result<Option<String>> {
    let ours = mounts("/proc/self/mountinfo").context("cannot read /proc/self/mountinfo")?;
    let Some(init) = mounts("/proc/1/mountinfo") else {
        tracing::debug!("cannot read /proc/1/mountinfo: not checking where the pins live");
        return Ok(None);
    };
    let shared = match ours.iter().rev().find(|m| m.point == BPFFS) {
        Some(bpffs) if bpffs.fstype == "bpf" => {
            init.iter().any(|m| m.fstype == "bpf" && m.device == bpffs.device)
        }
        _ => ours
            .iter()
            .filter(|m| Path::new(BPFFS).starts_with(&m.point))
            .max_by_key(|m| m.point.len())
            .is_some_and(|holder| init.iter().any(|m| m.id == holder.id)),
    };
    if shared {
        return Ok(None);
    }
    let run_with = match netns_name() {
        Some(name) => format!("'nsenter --net=/run/netns/{name} knock-xdp attach ...'"),
        None => "nsenter --net=... from the host's mount namespace".to_owned(),
    };
    Ok(Some(format!(
        "this process has a mount namespace of its own (ip netns exec?) whose bpffs at {BPFFS} \
         dies with it, so a killed daemon would take its pins and protection with it; run it \
         with {run_with}, or accept that with --fail-open"
    )))
}

/// One line of /proc/PID/mountinfo, as far as [`private_bpffs`] needs it.
struct Mount {
    id: u64,
    /// `major:minor` of the file system.
    device: String,
    point: String,
    fstype: String,
}

/// The mounts of a mountinfo file, in its order (a later mount at the same
/// point covers an earlier one); `None` when it cannot be read.
fn mounts(path: &str) -> Option<Vec<Mount>> {
    let text = fs::read_to_string(path).ok()?;
    // "42 23 0:39 / /sys/fs/bpf rw,relatime shared:12 - bpf bpf rw"
    Some(
        text.lines()
            .filter_map(|line| {
                let (before, after) = line.split_once(" - ")?;
                let fields: Vec<&str> = before.split(' ').collect();
                Some(Mount {
                    id: fields.first()?.parse().ok()?,
                    device: (*fields.get(2)?).to_owned(),
                    point: (*fields.get(4)?).to_owned(),
                    fstype: after.split(' ').next()?.to_owned(),
                })
            })
            .collect(),
    )
}

/// The name under /run/netns of this process's network namespace, if any.
fn netns_name() -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let own = fs::metadata("/proc/self/ns/net").ok()?;
    fs::read_dir("/run/netns").ok()?.flatten().find_map(|entry| {
        let meta = fs::metadata(entry.path()).ok()?;
        (meta.dev() == own.dev() && meta.ino() == own.ino())
            .then(|| entry.file_name().to_string_lossy().into_owned())
    })
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: `statfs` is plain data; zeroed is a valid initial value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// Removes an instance's pins: links first (which detaches them), then the
/// maps and the directory. Returns the interfaces that were detached.
pub fn remove_pins(pin_dir: &Path) -> Result<Vec<String>> {
    let mut detached = Vec::new();
    let entries = match fs::read_dir(pin_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(detached),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", pin_dir.display())),
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    // Links before maps, so the program stops running before its maps go.
    paths.sort_by_key(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("link-")));
    for path in paths {
        if let Some(iface) =
            path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("link-"))
        {
            detach_pinned_link(&path)
                .with_context(|| format!("cannot detach {}", path.display()))?;
            detached.push(iface.to_owned());
        }
        fs::remove_file(&path).with_context(|| format!("cannot remove pin {}", path.display()))?;
    }
    fs::remove_dir(pin_dir).with_context(|| format!("cannot remove {}", pin_dir.display()))?;
    // Leave the shared parent when it is empty; another instance may own a sibling.
    if let Some(parent) = pin_dir.parent() {
        let _ = fs::remove_dir(parent);
    }
    Ok(detached)
}

/// Detaches one interface's pinned link and removes its pin; the program,
/// its maps and the other interfaces' links stay. False when `iface` has
/// no pinned link. The name is matched against the pins, never joined into
/// a path.
pub fn remove_link(pin_dir: &Path, iface: &str) -> Result<bool> {
    let entries = match fs::read_dir(pin_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", pin_dir.display())),
    };
    let wanted = format!("link-{iface}");
    let Some(path) =
        entries.filter_map(|e| e.ok()).find(|e| e.file_name() == *wanted).map(|e| e.path())
    else {
        return Ok(false);
    };
    detach_pinned_link(&path).with_context(|| format!("cannot detach {}", path.display()))?;
    fs::remove_file(&path).with_context(|| format!("cannot remove pin {}", path.display()))?;
    Ok(true)
}

/// True when an instance left a pinned link behind (its program is still attached).
pub fn pinned_link_exists(pin_dir: &Path) -> bool {
    fs::read_dir(pin_dir).is_ok_and(|mut entries| {
        entries.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("link-")))
    })
}

/// Detaches the link pinned at `path` now, with BPF_LINK_DETACH (Linux 5.9):
/// the interface is free of the program when this returns, whoever else
/// still holds the link.
pub(super) fn detach_pinned_link(path: &Path) -> std::io::Result<()> {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // union bpf_attr, large enough for both commands.
    let mut attr = [0u64; 16];
    attr[0] = c_path.as_ptr() as u64; // obj_get.pathname; bpf_fd and file_flags stay 0
    // SAFETY: a valid attr of the size passed; the kernel reads a NUL-terminated path.
    let fd =
        unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_ptr(), size_of_val(&attr)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor we own.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let mut attr = [0u64; 16];
    attr[0] = std::os::fd::AsRawFd::as_raw_fd(&fd) as u64; // link_detach.link_fd
    // SAFETY: a valid attr of the size passed.
    let rc =
        unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_DETACH, attr.as_ptr(), size_of_val(&attr)) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
