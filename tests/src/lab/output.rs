//! Reading what a command printed, and what a refusal must look like.

use std::process::Output;

/// Everything a command printed, stdout then stderr: for messages, and for
/// phrases that may be on either.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The error a failed command printed: one `knock-xdp: ...` line on
/// stderr, no panic. `what` names the command in the message.
#[track_caller]
pub fn error_line(what: &str, out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{what} succeeded: {}", text(out));
    assert_eq!(stderr.trim_end().lines().count(), 1, "{what}: not one line:\n{stderr}");
    assert!(stderr.starts_with("knock-xdp: "), "{what}: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "{stderr}");
    stderr
}

/// A refusal: exit status 1 and the one line of [`error_line`], returned
/// for the test to check what it says.
#[track_caller]
pub fn refusal(what: &str, out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{what}: exit {}: {}", out.status, text(out));
    error_line(what, out)
}

/// One string field of every object in a JSON array: `field(&list["allowed"], "addr")`.
pub fn field<'a>(array: &'a serde_json::Value, name: &str) -> Vec<&'a str> {
    array
        .as_array()
        .expect("an array")
        .iter()
        .map(|item| item[name].as_str().expect("a string"))
        .collect()
}
