//! The loaded program and its attachments: attaching to interfaces, and
//! taking over the links an earlier run pinned.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        ProgramError, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use knock_common::maps::{ALL_MAPS, Limits};

use super::{
    EBPF_OBJECT, Mode, attachable_if_index, if_index, load_sized,
    pins::{detach_pinned_link, remove_pins},
    size_maps, xdp,
};

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
        let ifindex = attachable_if_index(iface)?;
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
