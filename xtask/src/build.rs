//! `cargo xtask build-ebpf`: the standalone way to build the XDP object.
//!
//! knock-userspace's build script embeds its own fresh object through
//! aya-build; this produces the same object in the workspace target
//! directory, for inspection with bpftool or llvm-objdump.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::{cargo, run_cmd, setup, target_dir};

pub const BPF_TARGET: &str = "bpfel-unknown-none";
/// The knock-ebpf crate's binary name.
const OBJECT_NAME: &str = "knock";

#[derive(clap::Args)]
pub struct Args {
    /// Build with the dev profile instead of --release
    /// (the object lands in target/bpfel-unknown-none/debug/knock).
    #[arg(long)]
    debug: bool,
}

pub fn run(args: &Args) -> Result<()> {
    setup::ensure()?;
    let object = build_ebpf(!args.debug)?;
    println!("{}", object.display());
    Ok(())
}

/// Builds knock-ebpf for the BPF target and returns the object's path.
pub fn build_ebpf(release: bool) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.arg(format!("+{}", crate::setup::bpf_toolchain()?));
    cmd.args(["build", "-Z", "build-std=core", "--target", BPF_TARGET]);
    if release {
        cmd.arg("--release");
    }
    cmd.args(["-p", "knock-ebpf"])
        // BTF for the maps and globals; bpf-linker emits it from the debug info.
        .env("CARGO_ENCODED_RUSTFLAGS", "-Cdebuginfo=2\x1f-Clink-arg=--btf")
        // The outer cargo's compiler settings are for the host toolchain.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    run_cmd(&mut cmd)?;

    let profile = if release { "release" } else { "debug" };
    let object = target_dir().join(BPF_TARGET).join(profile).join(OBJECT_NAME);
    if !object.is_file() {
        bail!("build-ebpf: cargo succeeded but {} does not exist", object.display());
    }
    Ok(object)
}
