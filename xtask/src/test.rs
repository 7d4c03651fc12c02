//! `cargo xtask test`: builds the daemon binary and runs the whole test
//! suite against it.

use std::ffi::OsString;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::{cargo, describe, is_root, run_cmd, setup, target_dir};

#[derive(clap::Args)]
pub struct Args {
    /// Longer floods and sprays (ten times the packets): a soak run.
    #[arg(long)]
    soak: bool,
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
            if ci { "will FAIL because CI=true" } else { "will be skipped" }
        );
    }

    run_cmd(cargo().args(["build", "-p", "knock-userspace", "--bin", "knock-xdp"]))
        .context("xtask test: building knock-xdp failed")?;
    let bin = target_dir().join("debug").join("knock-xdp");

    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--exclude", "knock-ebpf"])
        .args(&args.cargo_test_args)
        .env("KNOCK_XDP_BIN", &bin);
    if args.soak {
        cmd.env("KNOCK_XDP_SOAK", "1");
    }
    let totals = run_counting(&mut cmd)?;
    // One plain closing line for the whole run; cargo's own end with the
    // last (often empty) test binary.
    println!("xtask test: {} passed, {} failed", totals.passed, totals.failed);
    if !totals.success {
        bail!("tests failed");
    }
    Ok(())
}

struct Totals {
    passed: u64,
    failed: u64,
    success: bool,
}

/// Runs `cargo test`, echoing its output and adding up the counts of every
/// `test result:` line.
fn run_counting(cmd: &mut Command) -> Result<Totals> {
    let desc = describe(cmd);
    let mut child =
        cmd.stdout(Stdio::piped()).spawn().with_context(|| format!("could not start `{desc}`"))?;
    let mut totals = Totals { passed: 0, failed: 0, success: false };
    let stdout = child.stdout.take().context("no stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            totals.passed += count(rest, " passed");
            totals.failed += count(rest, " failed");
        }
    }
    totals.success = child.wait().context("waiting for cargo test")?.success();
    Ok(totals)
}

/// The number before `label` in "ok. 6 passed; 0 failed; ...".
fn count(summary: &str, label: &str) -> u64 {
    summary
        .split(';')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(label)?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn counts_cargo_summaries() {
        let line =
            "ok. 6 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.55s";
        assert_eq!(count(line, " passed"), 6);
        assert_eq!(count(line, " failed"), 1);
        assert_eq!(count("FAILED. 3 passed; 2 failed; 0 ignored", " failed"), 2);
    }
}
