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

/// Runs `tests/python/<script>` on `vectors` and requires it to succeed
/// with one `ok ...` line for each of the `expected` vectors.
pub fn assert_python_agrees(script: &str, vectors: &Path, expected: usize) {
    let out = run_python(script, vectors);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python reference failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let oks = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert_eq!(oks, expected, "python output:\n{stdout}");
}

/// Writes a tampered copy of a vectors file where a test can find it.
pub fn write_tampered(name: &str, doc: &serde_json::Value) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-tampered-{}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_string(doc).unwrap()).unwrap();
    path
}
