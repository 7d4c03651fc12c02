//! `cargo xtask test`: lints, builds the daemon binary and runs the whole
//! test suite against it.
//!
//! Every test binary runs even after one fails (`--no-fail-fast`); the run
//! ends with one line of passed, failed and skipped counts and the names of
//! whatever failed, lints included.

use std::ffi::OsString;
use std::fs;
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::{build::BPF_TARGET, cargo, describe, is_root, is_truthy, run_cmd, setup, target_dir};

#[derive(clap::Args)]
pub struct Args {
    /// Longer floods and sprays (ten times the packets): a soak run.
    #[arg(long)]
    soak: bool,
    /// Skip rustfmt and clippy (they run by default).
    #[arg(long)]
    no_lint: bool,
    /// Extra arguments for `cargo test`, after `--`
    /// (e.g. `cargo xtask test -- some_test_name -- --nocapture`).
    #[arg(last = true, value_name = "CARGO_TEST_ARGS")]
    cargo_test_args: Vec<OsString>,
}

pub fn run(args: &Args) -> Result<()> {
    setup::ensure()?;

    let ci = std::env::var("CI").is_ok_and(|v| is_truthy(&v));
    if !is_root() {
        eprintln!(
            "xtask test: warning: not running as root; the privileged tests (XDP attach, network namespaces) {}",
            if ci { "will FAIL because CI is set" } else { "will be skipped" }
        );
    }

    let mut failures = Vec::new();
    if !args.no_lint {
        failures.extend(lint());
    }

    run_cmd(cargo().args(["build", "-p", "knock-userspace", "--bin", "knock-xdp"]))
        .context("xtask test: building knock-xdp failed")?;
    let bin = target_dir().join("debug").join("knock-xdp");

    // Privileged tests that skip write their name here (see knock_tests::privileged).
    let skips = target_dir().join("test-skips.log");
    let _ = fs::remove_file(&skips);

    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--exclude", "knock-ebpf", "--no-fail-fast"])
        .args(&args.cargo_test_args)
        .env("KNOCK_XDP_BIN", &bin)
        .env("KNOCK_XDP_SKIP_LOG", &skips);
    if args.soak {
        cmd.env("KNOCK_XDP_SOAK", "1");
    }
    let totals = run_counting(&mut cmd)?;
    failures.extend(totals.failed_names.iter().cloned());
    if !totals.success && totals.failed_names.is_empty() {
        failures.push("cargo test (a test binary failed to build or crashed)".to_owned());
    }
    let skipped = count_lines(&skips);

    // One plain closing line for the whole run; cargo's own end with the
    // last (often empty) test binary.
    println!("xtask test: {} passed, {} failed, {skipped} skipped", totals.passed, totals.failed);
    if !failures.is_empty() {
        println!("xtask test: failed:");
        for name in &failures {
            println!("  {name}");
        }
        bail!("tests failed");
    }
    if skipped > 0 && ci {
        bail!("{skipped} privileged tests skipped under CI");
    }
    Ok(())
}

/// rustfmt and clippy (warnings denied) on the host crates, then clippy on
/// the BPF crates for their own target. Returns what failed.
fn lint() -> Vec<String> {
    let toolchain = match crate::setup::bpf_toolchain() {
        Ok(toolchain) => toolchain,
        Err(err) => {
            eprintln!("xtask test: {err:#}");
            return vec!["clippy (BPF crates)".to_owned()];
        }
    };
    let checks: [(&str, Command); 3] = [
        ("cargo fmt --check", {
            let mut cmd = cargo();
            cmd.args(["fmt", "--all", "--check"]);
            cmd
        }),
        ("clippy (host crates)", {
            let mut cmd = cargo();
            cmd.args(["clippy", "--workspace", "--exclude", "knock-ebpf", "--all-targets"])
                .args(["--", "-D", "warnings"]);
            cmd
        }),
        ("clippy (BPF crates)", {
            let mut cmd = cargo();
            cmd.arg(format!("+{toolchain}"))
                .args(["clippy", "-Z", "build-std=core", "--target", BPF_TARGET])
                .args(["--release", "-p", "knock-ebpf", "-p", "knock-bench-noop"])
                .args(["--", "-D", "warnings"])
                .env_remove("RUSTC")
                .env_remove("RUSTC_WORKSPACE_WRAPPER");
            cmd
        }),
    ];
    let mut failed = Vec::new();
    for (name, mut cmd) in checks {
        println!("xtask test: {name}");
        if let Err(err) = run_cmd(&mut cmd) {
            eprintln!("xtask test: {err:#}");
            failed.push(name.to_owned());
        }
    }
    failed
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    failed_names: Vec<String>,
    success: bool,
}

/// Runs `cargo test`, echoing its output, adding up the counts of every
/// `test result:` line and collecting the names of failed tests.
fn run_counting(cmd: &mut Command) -> Result<Totals> {
    let desc = describe(cmd);
    let mut child =
        cmd.stdout(Stdio::piped()).spawn().with_context(|| format!("could not start `{desc}`"))?;
    let mut totals = Totals::default();
    let stdout = child.stdout.take().context("no stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            totals.passed += count(rest, " passed");
            totals.failed += count(rest, " failed");
        } else if let Some(name) = failed_test(&line) {
            totals.failed_names.push(name.to_owned());
        }
    }
    totals.success = child.wait().context("waiting for cargo test")?.success();
    Ok(totals)
}

/// The test name of a libtest line `test NAME ... FAILED`.
fn failed_test(line: &str) -> Option<&str> {
    line.strip_prefix("test ")?.strip_suffix(" ... FAILED")
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

fn count_lines(path: &Path) -> usize {
    fs::read_to_string(path).map_or(0, |text| text.lines().count())
}

#[cfg(test)]
mod tests {
    use super::{count, failed_test};

    #[test]
    fn counts_cargo_summaries() {
        let line =
            "ok. 6 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.55s";
        assert_eq!(count(line, " passed"), 6);
        assert_eq!(count(line, " failed"), 1);
        assert_eq!(count("FAILED. 3 passed; 2 failed; 0 ignored", " failed"), 2);
    }

    #[test]
    fn names_failed_tests() {
        assert_eq!(failed_test("test knocking::opens ... FAILED"), Some("knocking::opens"));
        assert_eq!(failed_test("test knocking::opens ... ok"), None);
        assert_eq!(failed_test("failures:"), None);
    }
}
