//! What the spec-vector tests share: where the repository is, and running
//! an independent Python implementation over a vectors file.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `tests/python/<script>` on `vectors`.
pub fn run_python(script: &str, vectors: &Path) -> Output {
    let script = repo_root().join("tests/python").join(script);
    Command::new("python3")
        .arg(&script)
        .arg(vectors)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 {}: {e}", script.display()))
}

/// Writes a tampered copy of a vectors file where a test can find it.
pub fn write_tampered(name: &str, doc: &serde_json::Value) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-tampered-{}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_string(doc).unwrap()).unwrap();
    path
}
