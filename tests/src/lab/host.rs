//! knock-xdp on the host, outside the lab's namespaces: a scratch
//! directory removed on drop, and commands run against a state directory
//! in it, for what needs no network (units, manifests, client files).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use super::binary;

/// A directory under the temporary directory, empty at first and removed
/// on drop, also when the test fails.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// `name` tells the tests' directories apart; the process id, runs.
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("knock-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `knock-xdp --state-dir STATE ARGS` on the host.
pub fn host_cli(state: &Path, args: &[&str]) -> Output {
    Command::new(binary()).arg("--state-dir").arg(state).args(args).output().expect("knock-xdp")
}
