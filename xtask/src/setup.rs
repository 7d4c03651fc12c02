//! `cargo xtask setup`: idempotent installation of the build and test
//! prerequisites on a Debian machine.
//!
//! Each item is checked first and installed only when missing, so
//! [`ensure`] is cheap enough to run before every other subcommand.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::{cargo, is_root, output_if_ok, run_cmd};

/// Debian packages: LLVM 22 (bpf-linker links against it), bpftool for
/// inspecting programs, iproute2 for the namespaced tests and the demo,
/// python3 for the demo's HTTP service and the spec checks; third-party
/// peers and tools the tests use: knockd (its `knock` client), oathtool (an
/// independent TOTP), zbar-tools (a QR decoder), python3-scapy (crafted
/// frames for the adversarial tests), nmap (a real port scanner), iptables
/// and nftables (the benchmark's comparison), fwknop-server and
/// fwknop-client (the benchmark's SPA peer), systemd (systemd-analyze checks
/// the unit).
const DEBIAN_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "bpftool",
    "iproute2",
    "python3",
    "knockd",
    "oathtool",
    "zbar-tools",
    "python3-scapy",
    "nmap",
    "iptables",
    "nftables",
    "fwknop-server",
    "fwknop-client",
    "systemd",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPFFS: &str = "/sys/fs/bpf";

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    /// Report every item, present or not (`cargo xtask setup`).
    Verbose,
    /// Report only what gets installed or is wrong (other subcommands).
    Quiet,
}

/// Makes sure everything is installed; called first by the other subcommands.
pub fn ensure() -> Result<()> {
    run(Verbosity::Quiet)
}

/// Checks every item and installs what is missing.
pub fn run(verbosity: Verbosity) -> Result<()> {
    let report = |item: &str| {
        if verbosity == Verbosity::Verbose {
            println!("setup: {item}: present");
        }
    };

    debian_packages(&report)?;
    bpf_toolchain_and_components(&report)?;
    bpf_linker(&report)?;
    bpffs(&report)?;

    if verbosity == Verbosity::Verbose {
        println!("setup: done");
    }
    Ok(())
}

/// Puts the cargo bin directory (`$CARGO_HOME/bin`, `~/.cargo/bin`) first on
/// PATH for this process and so for every child it spawns: that is where
/// `cargo install` puts bpf-linker and where the rustup proxies live.
pub fn prepend_cargo_bin_to_path() {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(cargo_home) = std::env::var_os("CARGO_HOME").filter(|v| !v.is_empty()) {
        dirs.push(PathBuf::from(cargo_home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        dirs.push(PathBuf::from(home).join(".cargo").join("bin"));
    }
    dirs.dedup();

    let current = std::env::var_os("PATH").unwrap_or_default();
    let rest = std::env::split_paths(&current).filter(|p| !dirs.contains(p));
    let Ok(path) = std::env::join_paths(dirs.iter().cloned().chain(rest)) else {
        // A directory containing ':' cannot be put on PATH; leave PATH alone.
        return;
    };
    if path != current {
        // SAFETY: called from main before any other thread exists, so nothing
        // can read the environment concurrently.
        unsafe { std::env::set_var("PATH", &path) };
    }
}

fn debian_packages(report: &impl Fn(&str)) -> Result<()> {
    let mut missing = Vec::new();
    for &pkg in DEBIAN_PACKAGES {
        let item = format!("package {pkg}");
        if package_installed(pkg)? {
            report(&item);
        } else {
            missing.push(pkg);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }

    let list = missing.join(" ");
    if !is_root() {
        bail!(
            "setup: Debian packages missing: {list}; run `cargo xtask setup` as root to install them"
        );
    }
    for pkg in &missing {
        println!("setup: package {pkg}: installing ...");
    }
    run_cmd(Command::new("apt-get").arg("update")).context("setup: apt-get update failed")?;
    // Without recommendations: python3-scapy alone would bring about 150
    // packages (ImageMagick, matplotlib, IPython) that nothing here uses.
    run_cmd(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )
    .with_context(|| format!("setup: installing Debian packages failed: {list}"))?;
    for &pkg in &missing {
        if !package_installed(pkg)? {
            bail!("setup: package {pkg}: still not installed after apt-get install");
        }
    }
    Ok(())
}

fn package_installed(pkg: &str) -> Result<bool> {
    // dpkg-query exits non-zero for unknown packages; only a failure to run
    // it at all is an error (not a Debian system).
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .stderr(Stdio::null())
        .output()
        .context("setup: could not run dpkg-query (this setup supports Debian only)")?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

/// The nightly toolchain that builds the XDP program, from
/// `knock-ebpf/rust-toolchain`. Pinned, because its LLVM must be the one
/// bpf-linker is built against (LLVM 22): bpf-linker cannot read the
/// bitcode of a newer LLVM, which a newer nightly brings.
pub fn bpf_toolchain() -> Result<String> {
    let path = crate::workspace_root().join("knock-ebpf/rust-toolchain");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("setup: cannot read {}", path.display()))?;
    Ok(text.trim().to_owned())
}

/// What the BPF build needs of its toolchain: the core library's source
/// (`-Z build-std=core`) and clippy (`xtask test` lints the BPF crates).
const BPF_COMPONENTS: [&str; 2] = ["rust-src", "clippy"];

fn bpf_toolchain_and_components(report: &impl Fn(&str)) -> Result<()> {
    let toolchain = bpf_toolchain()?;
    let toolchains = output_if_ok(Command::new("rustup").args(["toolchain", "list"]))
        .context("setup: `rustup toolchain list` failed; rustup is required (https://rustup.rs)")?;
    // Listed with the host's triple: `nightly-2026-05-20-x86_64-unknown-linux-gnu`.
    let prefix = format!("{toolchain}-");
    if toolchains.lines().any(|line| line.starts_with(&prefix)) {
        report(&format!("toolchain {toolchain}"));
    } else {
        println!("setup: toolchain {toolchain}: installing ...");
        run_cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            &toolchain,
            "--profile",
            "minimal",
        ]))
        .with_context(|| format!("setup: installing the toolchain {toolchain} failed"))?;
    }

    for component in BPF_COMPONENTS {
        if component_installed(&toolchain, component) {
            report(&format!("{component} ({toolchain})"));
            continue;
        }
        println!("setup: {component} ({toolchain}): installing ...");
        run_cmd(Command::new("rustup").args([
            "component",
            "add",
            component,
            "--toolchain",
            &toolchain,
        ]))
        .with_context(|| format!("setup: installing {component} for {toolchain} failed"))?;
        if !component_installed(&toolchain, component) {
            bail!(
                "setup: {component} ({toolchain}): still not installed after rustup component add"
            );
        }
    }
    Ok(())
}

fn component_installed(toolchain: &str, component: &str) -> bool {
    output_if_ok(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        toolchain,
        "--installed",
    ]))
    .is_some_and(|list| {
        list.lines()
            .filter_map(|l| l.split_whitespace().next())
            .any(|c| c == component || c.starts_with(&format!("{component}-")))
    })
}

fn bpf_linker(report: &impl Fn(&str)) -> Result<()> {
    if bpf_linker_runs() {
        report("bpf-linker");
        return Ok(());
    }
    println!(
        "setup: bpf-linker: installing {BPF_LINKER_VERSION} (builds against LLVM 22, takes a few minutes) ..."
    );
    let install = |locked: bool| {
        let mut cmd = cargo();
        cmd.args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION]);
        if locked {
            cmd.arg("--locked");
        }
        cmd.args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            // Leave the outer cargo's toolchain overrides out of this build.
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("CARGO_ENCODED_RUSTFLAGS");
        run_cmd(&mut cmd)
    };
    if let Err(err) = install(true) {
        println!(
            "setup: bpf-linker: `--locked` install failed ({err:#}); retrying without --locked ..."
        );
        install(false).context("setup: installing bpf-linker failed")?;
    }
    if !bpf_linker_runs() {
        bail!(
            "setup: bpf-linker: installed but `bpf-linker --version` still fails (PATH: {})",
            std::env::var("PATH").unwrap_or_default()
        );
    }
    Ok(())
}

fn bpf_linker_runs() -> bool {
    // PATH already has ~/.cargo/bin in front (prepend_cargo_bin_to_path).
    Command::new("bpf-linker")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn bpffs(report: &impl Fn(&str)) -> Result<()> {
    let item = format!("bpffs at {BPFFS}");
    if bpffs_mounted()? {
        report(&item);
        return Ok(());
    }
    if !is_root() {
        // Only the privileged daemon needs it, and that needs root anyway;
        // unprivileged work (building, unprivileged tests) can go on.
        println!(
            "setup: {item}: not mounted; warning: run `cargo xtask setup` as root to mount it"
        );
        return Ok(());
    }
    println!("setup: {item}: mounting ...");
    std::fs::create_dir_all(BPFFS).with_context(|| format!("setup: creating {BPFFS} failed"))?;
    run_cmd(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
        .with_context(|| format!("setup: mounting bpffs at {BPFFS} failed"))?;
    if !bpffs_mounted()? {
        bail!("setup: {item}: still not mounted after `mount -t bpf`");
    }
    Ok(())
}

fn bpffs_mounted() -> Result<bool> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")
        .context("setup: reading /proc/self/mounts failed")?;
    Ok(mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype) = (fields.next(), fields.next(), fields.next());
        target == Some(BPFFS) && fstype == Some("bpf")
    }))
}
