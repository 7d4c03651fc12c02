//! `cargo xtask test`: builds the daemon binary and runs the whole test
//! suite against it.

use std::ffi::OsString;

use anyhow::{Context, Result};

use crate::{cargo, is_root, run_cmd, setup, target_dir};

#[derive(clap::Args)]
pub struct Args {
    /// Extra arguments for `cargo test`, after `--`
    /// (e.g. `cargo xtask test -- some_test_name -- --nocapture`).
    #[arg(last = true, value_name = "CARGO_TEST_ARGS")]
    cargo_test_args: Vec<OsString>,
}

pub fn run(args: &Args) -> Result<()> {
    setup::ensure()?;

    if !is_root() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        eprintln!(
            "xtask test: warning: not running as root; the privileged tests (XDP attach, network namespaces) {}",
            if ci {
                "will FAIL because CI=true"
            } else {
                "will be skipped"
            }
        );
    }

    run_cmd(cargo().args(["build", "-p", "knock-userspace", "--bin", "knock-xdp"]))
        .context("xtask test: building knock-xdp failed")?;
    let bin = target_dir().join("debug").join("knock-xdp");

    run_cmd(
        cargo()
            .args(["test", "--workspace", "--exclude", "knock-ebpf"])
            .args(&args.cargo_test_args)
            .env("KNOCK_XDP_BIN", &bin),
    )
    .context("xtask test: tests failed")?;

    println!("xtask test: all tests passed");
    Ok(())
}
