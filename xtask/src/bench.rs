//! `cargo xtask bench`: builds the daemon and the bench binary (release) and
//! runs the benchmarks of `knock_tests::bench` as root; the table goes to
//! stdout, the JSON to `target/bench/results.json`.

use anyhow::{Context, Result, bail};

use crate::{cargo, is_root, run_cmd, setup, target_dir};

#[derive(clap::Args)]
pub struct Args {
    /// Fewer runs, frames and sources (about a minute; the numbers are noisier).
    #[arg(long)]
    quick: bool,
    /// Only this part (per-packet, spa, scale, clients, throughput, footprint, latency,
    /// fwknop); repeatable.
    #[arg(long, value_name = "PART")]
    only: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    setup::ensure()?;
    if !is_root() {
        bail!("xtask bench needs root (BPF_PROG_TEST_RUN, XDP, network namespaces)");
    }
    run_cmd(cargo().args(["build", "--release", "-p", "knock-userspace", "--bin", "knock-xdp"]))
        .context("xtask bench: building knock-xdp failed")?;
    let out = target_dir().join("bench").join("results.json");
    let mut cmd = cargo();
    cmd.args(["run", "--release", "-p", "knock-tests", "--bin", "bench", "--"])
        .arg("--out")
        .arg(&out)
        .env("KNOCK_XDP_BIN", target_dir().join("release").join("knock-xdp"));
    if args.quick {
        cmd.arg("--quick");
    }
    for part in &args.only {
        cmd.args(["--only", part]);
    }
    run_cmd(&mut cmd).context("xtask bench: the benchmarks failed")
}
