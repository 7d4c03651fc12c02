//! Loading the XDP program, attaching it to interfaces, and its bpffs pins.
//!
//! Pins live in `/sys/fs/bpf/knock-xdp/<instance>/`, where the instance id is
//! derived from the state directory, so instances never share pins:
//!
//! ```text
//! PORT_FLAGS, ALLOW, COUNTERS   the maps
//! link-<iface>                  one XDP link per interface
//! ```
//!
//! A pinned link keeps the program attached if the daemon dies without
//! cleaning up, so protection stays in force (fail closed). A clean shutdown
//! or `knock-xdp detach` removes the pins, which detaches the program.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader, include_bytes_aligned,
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use knock_common::maps::{ALL_MAPS, Limits, PROGRAM_NAME};
use serde::{Deserialize, Serialize};

use crate::state::StateDir;

/// The XDP program, built by `build.rs` from the current sources.
pub static EBPF_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/knock"));

/// The benchmarks' baseline: an XDP program named `noop` that returns
/// XDP_PASS without reading the frame (`knock-ebpf/src/noop.rs`).
pub static NOOP_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/noop"));

const BPFFS: &str = "/sys/fs/bpf";
/// `BPF_FS_MAGIC` from the kernel's `include/uapi/linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// How to attach: `auto` prefers native (driver) XDP and falls back to generic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Auto,
    Native,
    Skb,
}

/// Parses the object and loads the program into the kernel (the verifier
/// runs here), with the default map sizes, without attaching it anywhere.
pub fn load() -> Result<Ebpf> {
    load_sized(&Limits::DEFAULT)
}

/// [`load`] with the maps sized for `limits`.
pub fn load_sized(limits: &Limits) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    size_maps(&mut loader, limits);
    let mut ebpf = loader.load(EBPF_OBJECT).context("cannot load the XDP object")?;
    xdp(&mut ebpf)?.load().context("the kernel refused the XDP program")?;
    Ok(ebpf)
}

/// Sizes the maps the limits set. Maps taken over from pins keep the
/// size they were created with.
fn size_maps(loader: &mut EbpfLoader, limits: &Limits) {
    for (name, entries) in limits.map_sizes() {
        loader.map_max_entries(name, entries);
    }
}

/// The XDP program inside a loaded object.
pub fn xdp(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let program = ebpf
        .program_mut(PROGRAM_NAME)
        .ok_or_else(|| anyhow!("the XDP object has no program named {PROGRAM_NAME}"))?;
    Ok(program.try_into()?)
}

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

/// The interface index of `name`, or a clear error when there is none.
pub fn if_index(name: &str) -> Result<u32> {
    let c_name =
        std::ffi::CString::new(name).map_err(|_| anyhow!("invalid interface name {name:?}"))?;
    // SAFETY: valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c_name.as_ptr()) } {
        0 => bail!("no network interface named '{name}'"),
        index => Ok(index),
    }
}

/// One interface the program is attached to.
#[derive(Debug)]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    /// The mode in use; `Auto` for a link taken over from an earlier run.
    pub mode: Mode,
    link: Link,
}

/// A pinned link outlives the daemon (fail closed); a held one goes with it.
#[derive(Debug)]
enum Link {
    Pinned(PinnedLink),
    Held(FdLink),
}

impl Link {
    /// Detaches. A pinned link is detached explicitly first: dropping its
    /// last reference by unpinning frees it only after an RCU grace period,
    /// and `detach` must not return while the program still runs.
    fn release(self, pin: &Path) -> std::io::Result<()> {
        match self {
            Link::Pinned(link) => {
                detach_pinned_link(pin)?;
                link.unpin().map(drop)
            }
            Link::Held(link) => {
                drop(link);
                Ok(())
            }
        }
    }
}

/// The loaded program, its pins and its attachments. Dropping it does not
/// detach pinned links: only [`Program::shutdown`] does, so a crash stays
/// fail-closed. With `fail_open`, nothing is pinned and everything goes with
/// the process.
pub struct Program {
    pub ebpf: Ebpf,
    pub pin_dir: PathBuf,
    pub fail_open: bool,
    pub attachments: Vec<Attachment>,
}

impl Program {
    /// Loads the program. Unless `fail_open`, its maps live in `pin_dir`:
    /// maps an earlier run left there are adopted with everything in them
    /// (allowed sources, flows, knocks in progress), and so are its links,
    /// whose program is swapped for this one in place. The interfaces are
    /// never without the filter.
    pub fn load(pin_dir: PathBuf, fail_open: bool, limits: &Limits) -> Result<Self> {
        if fail_open {
            if pin_dir.exists() {
                bail!(
                    "knock-xdp is still attached from an earlier run of this instance (pins in {}); \
                     run 'knock-xdp detach' first, or attach without --fail-open to take it over",
                    pin_dir.display()
                );
            }
            let ebpf = load_sized(limits)?;
            return Ok(Self { ebpf, pin_dir, fail_open, attachments: Vec::new() });
        }
        let adopting = pin_dir.exists();
        fs::create_dir_all(&pin_dir)
            .with_context(|| format!("cannot create pin directory {}", pin_dir.display()))?;
        let paths: Vec<(&str, PathBuf)> =
            ALL_MAPS.iter().map(|&name| (name, pin_dir.join(name))).collect();
        let mut loader = EbpfLoader::new();
        size_maps(&mut loader, limits);
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let loaded = loader.load(EBPF_OBJECT).with_context(|| {
            format!("cannot load the XDP object with the maps pinned in {}", pin_dir.display())
        });
        let mut ebpf = match loaded {
            Ok(ebpf) => ebpf,
            Err(err) => {
                if !adopting {
                    let _ = remove_pins(&pin_dir);
                }
                return Err(err);
            }
        };
        xdp(&mut ebpf)?.load().context("the kernel refused the XDP program")?;
        let mut program = Self { ebpf, pin_dir, fail_open, attachments: Vec::new() };
        if adopting {
            program.adopt_links()?;
        }
        Ok(program)
    }

    /// Takes over the links an earlier run pinned: each link's program is
    /// replaced by this one atomically (BPF_LINK_UPDATE), so no packet ever
    /// meets an interface without the filter.
    fn adopt_links(&mut self) -> Result<()> {
        let entries = fs::read_dir(&self.pin_dir)
            .with_context(|| format!("cannot read {}", self.pin_dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            let Some(iface) =
                path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("link-"))
            else {
                continue;
            };
            let iface = iface.to_owned();
            let pinned = PinnedLink::from_pin(&path)
                .with_context(|| format!("cannot open the pinned link {}", path.display()))?;
            let Ok(ifindex) = if_index(&iface) else {
                // The interface is gone, and the kernel detached the link with it.
                pinned.unpin().with_context(|| format!("cannot remove {}", path.display()))?;
                tracing::warn!(interface = %iface, "interface from the earlier run is gone");
                continue;
            };
            let handle: FdLink = PinnedLink::from_pin(&path)?.into();
            let link = XdpLink::try_from(handle)
                .map_err(|_| anyhow!("{} is not an XDP link", path.display()))?;
            let program = xdp(&mut self.ebpf)?;
            let id = program
                .attach_to_link(link)
                .with_context(|| format!("cannot take over {iface}"))?;
            // The pin (and `pinned`) keep the link; this handle can go.
            drop(program.take_link(id)?);
            self.attachments.push(Attachment {
                iface,
                ifindex,
                mode: Mode::Auto,
                link: Link::Pinned(pinned),
            });
        }
        Ok(())
    }

    pub fn program_id(&mut self) -> Result<u32> {
        Ok(xdp(&mut self.ebpf)?.info().context("cannot query the program")?.id())
    }

    /// Attaches to `iface` and pins the link (unless fail-open).
    pub fn attach(&mut self, iface: &str, mode: Mode) -> Result<()> {
        let ifindex = if_index(iface)?;
        if self.attachments.iter().any(|a| a.ifindex == ifindex) {
            bail!("already attached to {iface}");
        }
        let (link, mode) = match mode {
            Mode::Native => (self.attach_as(iface, ifindex, XdpMode::Driver)?, Mode::Native),
            Mode::Skb => (self.attach_as(iface, ifindex, XdpMode::Skb)?, Mode::Skb),
            Mode::Auto => match self.attach_as(iface, ifindex, XdpMode::Driver) {
                Ok(link) => (link, Mode::Native),
                Err(err) if is_busy(&err) => return Err(err),
                Err(_) => (self.attach_as(iface, ifindex, XdpMode::Skb)?, Mode::Skb),
            },
        };
        let link = if self.fail_open {
            Link::Held(link)
        } else {
            let path = self.link_pin(iface);
            Link::Pinned(
                link.pin(&path)
                    .with_context(|| format!("cannot pin the XDP link at {}", path.display()))?,
            )
        };
        self.attachments.push(Attachment { iface: iface.to_owned(), ifindex, mode, link });
        Ok(())
    }

    fn attach_as(&mut self, iface: &str, ifindex: u32, mode: XdpMode) -> Result<FdLink> {
        let program = xdp(&mut self.ebpf)?;
        let id = program
            .attach_to_if_index(ifindex, mode)
            .map_err(|err| attach_error(iface, mode, err))?;
        let link = program.take_link(id)?;
        FdLink::try_from(link).map_err(|_| {
            anyhow!("the kernel attached to {iface} without a BPF link; knock-xdp needs Linux 5.9 or newer")
        })
    }

    /// Whether a `kill -9` would leave protection in force: not fail-open,
    /// and every interface's link is pinned.
    pub fn survives_kill(&self) -> bool {
        !self.fail_open
            && !self.attachments.is_empty()
            && self.attachments.iter().all(|a| self.link_pin(&a.iface).exists())
    }

    fn link_pin(&self, iface: &str) -> PathBuf {
        self.pin_dir.join(format!("link-{iface}"))
    }

    /// Forgets an interface that no longer exists (the kernel detached its
    /// link when the device went): drops the attachment and its pin.
    pub fn forget(&mut self, iface: &str) {
        if let Some(index) = self.attachments.iter().position(|a| a.iface == iface) {
            let attachment = self.attachments.remove(index);
            if let Link::Pinned(link) = attachment.link {
                let _ = link.unpin();
            }
        }
    }

    /// Detaches from one interface.
    pub fn detach(&mut self, iface: &str) -> Result<()> {
        let index = self
            .attachments
            .iter()
            .position(|a| a.iface == iface)
            .ok_or_else(|| anyhow!("knock-xdp is not attached to '{iface}'"))?;
        let attachment = self.attachments.remove(index);
        let pin = self.link_pin(iface);
        attachment.link.release(&pin).with_context(|| format!("cannot detach from {iface}"))
    }

    /// Detaches from everything and removes every pin.
    pub fn shutdown(mut self) -> Result<()> {
        for attachment in std::mem::take(&mut self.attachments) {
            let iface = attachment.iface.clone();
            let pin = self.link_pin(&iface);
            attachment.link.release(&pin).with_context(|| format!("cannot detach from {iface}"))?;
        }
        if self.fail_open {
            return Ok(());
        }
        remove_pins(&self.pin_dir).map(drop)
    }
}

fn is_busy(err: &anyhow::Error) -> bool {
    err.downcast_ref::<Busy>().is_some()
}

/// Marker for "the interface already carries an XDP program".
#[derive(Debug)]
struct Busy(String);

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "interface {} already has an XDP program attached; knock-xdp will not replace it \
             (see 'ip link show {}')",
            self.0, self.0
        )
    }
}

impl std::error::Error for Busy {}

fn attach_error(iface: &str, mode: XdpMode, err: ProgramError) -> anyhow::Error {
    let errno = match &err {
        ProgramError::SyscallError(syscall) => syscall.io_error.raw_os_error(),
        _ => None,
    };
    match errno {
        Some(libc::EBUSY | libc::EEXIST) => Busy(iface.to_owned()).into(),
        Some(libc::EOPNOTSUPP) if mode == XdpMode::Driver => {
            anyhow!("interface {iface} does not support native XDP (try --mode skb)")
        }
        _ => anyhow::Error::new(err).context(format!("cannot attach to {iface}")),
    }
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

/// True when an instance left a pinned link behind (its program is still attached).
pub fn pinned_link_exists(pin_dir: &Path) -> bool {
    fs::read_dir(pin_dir).is_ok_and(|mut entries| {
        entries.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("link-")))
    })
}

/// Detaches the link pinned at `path` now, with BPF_LINK_DETACH (Linux 5.9):
/// the interface is free of the program when this returns, whoever else
/// still holds the link.
fn detach_pinned_link(path: &Path) -> std::io::Result<()> {
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
