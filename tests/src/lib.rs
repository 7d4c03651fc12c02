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
/// and under `CI=true` a skip is a failure: CI must never pass by skipping.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: needs root, and privileged tests may not skip under CI=true");
    }
    eprintln!("SKIP {test}: needs root (run 'sudo cargo xtask test')");
    false
}
