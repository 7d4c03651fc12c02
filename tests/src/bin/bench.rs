//! `cargo xtask bench` runs this (as root): every benchmark of
//! `knock_tests::bench`, a table on stdout, JSON to `--out`.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use knock_tests::bench::{self, Part, Settings};

fn main() -> Result<()> {
    let mut settings = Settings::full();
    let mut out = PathBuf::from("target/bench/results.json");
    let mut parts = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => settings = Settings::quick(),
            "--smoke" => settings = Settings::smoke(),
            "--out" => out = args.next().context("--out needs a path")?.into(),
            "--only" => {
                let name = args.next().context("--only needs a part")?;
                parts.push(
                    Part::parse(&name)
                        .with_context(|| format!("unknown part {name:?} ({})", Part::names()))?,
                );
            }
            other => bail!(
                "unknown argument {other:?} (expected --quick, --smoke, --only PART, --out PATH)"
            ),
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmarks need root (BPF_PROG_TEST_RUN, network namespaces)");
    }
    let report = if parts.is_empty() {
        bench::run(&settings)?
    } else {
        bench::run_parts(&settings, &parts)?
    };
    print!("{}", bench::table(&report));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&bench::to_json(&report))? + "\n")
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!("\nresults: {}", out.display());
    Ok(())
}
