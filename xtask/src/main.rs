//! `cargo xtask`: setup, eBPF build, test and demo orchestration for knock-xdp.
//!
//! Every subcommand that builds or runs something calls [`setup::ensure`]
//! first, so a fresh Debian machine only needs `cargo xtask test` (as root).

mod bench;
mod build;
mod demo;
mod setup;
mod test;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Setup, eBPF build, test and demo orchestration for knock-xdp",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install everything needed on a fresh Debian machine (idempotent; run as root).
    ///
    /// Checks the Debian packages (LLVM 22, bpftool, iproute2, python3, ...),
    /// the pinned nightly toolchain (knock-ebpf/rust-toolchain) with rust-src,
    /// bpf-linker and the bpffs mount at /sys/fs/bpf, and installs or mounts
    /// only what is missing.
    Setup,
    /// Build the XDP object (target/bpfel-unknown-none/release/knock) and print its path.
    BuildEbpf(build::Args),
    /// Build the daemon and run the whole test suite (run as root for the privileged tests).
    Test(test::Args),
    /// Run a self-contained knocking demo in throwaway network namespaces (must be root).
    Demo,
    /// Run the benchmarks (must be root): per-packet cost against a no-op XDP
    /// program, SPA, throughput and CPU per packet against iptables and
    /// nftables, scale, 4,096 clients, daemon footprint, knock-to-open
    /// latency, and fwknop side by side. Prints a table and writes
    /// target/bench/results.json.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    setup::prepend_cargo_bin_to_path();
    let result = match cli.command {
        Cmd::Setup => setup::run(setup::Verbosity::Verbose),
        Cmd::BuildEbpf(args) => build::run(&args),
        Cmd::Test(args) => test::run(&args),
        Cmd::Demo => demo::run(),
        Cmd::Bench(args) => bench::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: the parent of the xtask crate.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Cargo's target directory for this workspace, honouring `CARGO_TARGET_DIR`.
pub fn target_dir() -> PathBuf {
    let root = workspace_root();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// Whether the process runs with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The usual truthy spellings of an environment flag such as `CI`.
pub fn is_truthy(value: &str) -> bool {
    matches!(value.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
}

/// A `cargo` command run from the workspace root.
///
/// `cargo` is looked up on PATH (where `~/.cargo/bin` comes first, see
/// [`setup::prepend_cargo_bin_to_path`]) so that it is the rustup proxy and
/// understands `+toolchain`; the `CARGO` variable set by the outer cargo points
/// at a toolchain's own binary, which does not.
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root());
    cmd
}

/// A shell-like rendering of a command, for messages.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command with inherited stdio and fails unless it exits successfully.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let desc = describe(cmd);
    let status = cmd.status().with_context(|| format!("could not start `{desc}`"))?;
    if !status.success() {
        bail!("`{desc}` failed ({status})");
    }
    Ok(())
}

/// Runs a command, capturing its output; `None` if it could not be started
/// or exited unsuccessfully, otherwise its stdout.
pub fn output_if_ok(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
