//! `cargo xtask demo`: builds the daemon and runs `xtask/demo.sh`, which
//! shows the door closing, opening and closing again inside throwaway
//! network namespaces.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cargo, describe, is_root, run_cmd, setup, target_dir};

pub fn run() -> Result<()> {
    if !is_root() {
        bail!(
            "demo: must be run as root (it creates network namespaces and attaches XDP programs)"
        );
    }
    setup::ensure()?;
    run_cmd(cargo().args(["build", "-p", "knock-userspace", "--bin", "knock-xdp"]))
        .context("demo: building knock-xdp failed")?;
    let bin = target_dir().join("debug").join("knock-xdp");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script).arg(&bin);
    // Replace this process with the script so Ctrl-C reaches it directly and
    // its cleanup trap runs in the foreground; exec only returns on failure.
    let err = cmd.exec();
    Err(err).with_context(|| format!("demo: could not start `{}`", describe(&cmd)))
}
