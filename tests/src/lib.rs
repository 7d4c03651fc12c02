//! Harness for knock-xdp's privileged tests: crafted frames for
//! BPF_PROG_TEST_RUN, and a lab of network namespaces joined by a veth pair
//! with real services and a real daemon. Every resource is owned by a guard
//! that tears it down on drop, even when the test fails.

pub mod bench;
pub mod flood;
pub mod frames;
pub mod lab;
pub mod packet;
pub mod sniff;
pub mod testrun;

/// True when the test may run. Privileged tests skip loudly without root,
/// and under CI (`CI` set to 1, true, yes or on) a skip is a failure: CI
/// must never pass by skipping. A skip is also recorded in the file named by
/// `KNOCK_XDP_SKIP_LOG`, so `cargo xtask test` can count it.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| {
        matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
    }) {
        panic!("{test}: needs root, and privileged tests may not skip under CI");
    }
    eprintln!("SKIP {test}: needs root (run 'sudo cargo xtask test')");
    if let Some(log) = std::env::var_os("KNOCK_XDP_SKIP_LOG") {
        use std::io::Write as _;
        if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = writeln!(file, "{test}");
        }
    }
    false
}

/// How many times longer floods and sprays run: ten under `KNOCK_XDP_SOAK=1`
/// (`cargo xtask test --soak`), else one.
pub fn soak_scale() -> u64 {
    if std::env::var("KNOCK_XDP_SOAK").is_ok_and(|v| v == "1") { 10 } else { 1 }
}
