//! Host hardening: what the commands do with a closed output pipe.

use std::{
    os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::process::ExitStatusExt as _,
    },
    process::{Command, Output, Stdio},
};

use knock_tests::{
    lab::{Entry, Instance, Lab, binary},
    privileged,
};

/// The write end of a pipe whose read end is already closed: the first
/// write to it fails with EPIPE (or raises SIGPIPE).
fn closed_pipe() -> Stdio {
    let mut fds = [0; 2];
    // SAFETY: a valid array of two fds for pipe2 to fill.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both fds are new and ours; the read end is closed at once.
    unsafe { libc::close(fds[0]) };
    // SAFETY: the write end is ours, owned from here on.
    Stdio::from(unsafe { OwnedFd::from_raw_fd(fds[1]) })
}

/// A command whose reader went away ends quietly: nothing on stderr (no
/// panic, no "Broken pipe"), and success or death by SIGPIPE, as `cat` does.
fn assert_quiet(what: &str, out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "{what}: {:?}\n{stderr}",
        out.status
    );
    assert!(stderr.is_empty(), "{what} wrote to stderr:\n{stderr}");
}

fn into_closed_pipe(mut command: Command) -> Output {
    command.stdout(closed_pipe()).stderr(Stdio::piped()).output().expect("cannot run knock-xdp")
}

#[test]
fn every_command_ends_quietly_on_a_closed_pipe() {
    if !privileged("every_command_ends_quietly_on_a_closed_pipe") {
        return;
    }
    let lab = Lab::new();
    let mut knock = Instance::new(&lab.server, Entry::NetnsExec);
    knock.attach(&[&lab.server_if]);
    knock.ok(&["protect", "8022"]);
    knock.add_client("alice", &[]);
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["list"],
        &["list", "--json"],
        &["log"],
        &["client", "list"],
        &["client", "show", "alice"],
    ] {
        assert_quiet(&args.join(" "), &into_closed_pipe(knock.command(args)));
    }
    for args in [&["completions", "bash"][..], &["manpage"], &["--help"], &["status", "--help"]] {
        let mut command = Command::new(binary());
        command.args(args);
        assert_quiet(&args.join(" "), &into_closed_pipe(command));
    }
    // The daemon lived through all of it.
    assert!(knock.cli(&["status"]).status.success(), "{}", knock.daemon_log());
}
