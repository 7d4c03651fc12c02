//! Loading the XDP program, attaching it to interfaces, and its bpffs pins.
//!
//! Pins live in `/sys/fs/bpf/knock-xdp/<instance>/`, where the instance id is
//! derived from the state directory, so instances never share pins:
//!
//! ```text
//! PORT_FLAGS, ALLOW, FLOWS, ...  every map (ALL_MAPS)
//! link-<iface>                  one XDP link per interface
//! ```
//!
//! A pinned link keeps the program attached if the daemon dies without
//! cleaning up, so protection stays in force (fail closed). A clean shutdown
//! or `knock-xdp detach` removes the pins, which detaches the program.
//!
//! [`Program`] (`program.rs`) attaches and takes over links; `pins.rs` holds
//! bpffs and everything pinned in it.

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{Ebpf, EbpfLoader, include_bytes_aligned, programs::Xdp};
use knock_common::maps::{Limits, PROGRAM_NAME};
use serde::{Deserialize, Serialize};

mod pins;
mod program;

pub use pins::{
    ensure_bpffs, pin_dir, pinned_link_exists, private_bpffs, remove_link, remove_pins,
};
pub use program::{Attachment, Program};

/// The XDP program, built by `build.rs` from the current sources.
pub static EBPF_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/knock"));

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

/// [`if_index`] of an interface the program can read: one whose frames
/// start with an Ethernet header. On an IP-only link (WireGuard, tun,
/// GRE, PPP) generic XDP hands over frames that start at the IP header,
/// which the program would take for unrelated traffic and pass.
pub fn attachable_if_index(name: &str) -> Result<u32> {
    let index = if_index(name)?;
    match link_type(name)? {
        libc::ARPHRD_ETHER | libc::ARPHRD_LOOPBACK => Ok(index),
        other => bail!(
            "interface '{name}' does not carry Ethernet frames (link type {other}): \
             knock-xdp cannot protect it; attach to the Ethernet interface its traffic arrives on"
        ),
    }
}

/// The ARPHRD_* link type of `name`, asked of the kernel in this network
/// namespace (sysfs may show another one's).
fn link_type(name: &str) -> Result<u16> {
    // SAFETY: `ifreq` is plain C data, for which all zeroes is valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= request.ifr_name.len() {
        bail!("invalid interface name {name:?}");
    }
    for (to, from) in request.ifr_name.iter_mut().zip(bytes) {
        *to = *from as libc::c_char;
    }
    // SAFETY: plain socket and ioctl calls on a zeroed `ifreq` holding a
    // NUL-terminated name; the descriptor is closed on every path.
    unsafe {
        let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if socket < 0 {
            bail!("cannot open a socket to query '{name}': {}", std::io::Error::last_os_error());
        }
        let result = libc::ioctl(socket, libc::SIOCGIFHWADDR, &mut request);
        let error = std::io::Error::last_os_error();
        libc::close(socket);
        if result < 0 {
            bail!("cannot query the link type of '{name}': {error}");
        }
        Ok(request.ifr_ifru.ifru_hwaddr.sa_family)
    }
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
