//! Host hardening: what the commands do with a closed output pipe, with a
//! state directory that others could have written or that holds a planted
//! symbolic link, and under `ip netns exec`, where pins cannot outlive the
//! daemon.

use std::{
    fs,
    os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::{fs::PermissionsExt as _, process::ExitStatusExt as _},
    },
    path::Path,
    process::{Command, Output, Stdio},
    thread,
    time::Duration,
};

use knock_tests::{
    lab::{
        CLIENT_V4, Entry, Instance, Lab, SERVER_V4, SERVICE, binary, eventually, has_xdp, run,
        tcp_knocks,
    },
    privileged,
};
use knock_userspace::{
    control::{self, Changed, Request},
    probe::PortState,
    state::StateDir,
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

#[test]
fn a_daemon_whose_log_pipe_closes_keeps_running() {
    if !privileged("a_daemon_whose_log_pipe_closes_keeps_running") {
        return;
    }
    let lab = Lab::new();
    let knock = Instance::new(&lab.server, Entry::NetnsExec);
    // `knock-xdp attach 2>&1 | head`, once head has gone.
    let mut daemon = knock
        .command(&["attach", &lab.server_if, "--fail-open"])
        .stdout(closed_pipe())
        .stderr(closed_pipe())
        .spawn()
        .expect("cannot start the daemon");
    let ready = std::time::Instant::now();
    while !knock.cli(&["status"]).status.success() {
        if let Some(status) = daemon.try_wait().unwrap() {
            panic!("the daemon died with its log pipe closed: {status:?}");
        }
        assert!(ready.elapsed() < Duration::from_secs(20), "the daemon never became ready");
        thread::sleep(Duration::from_millis(50));
    }
    // Every one of these logs a line that goes nowhere.
    knock.ok(&["protect", "8022"]);
    knock.ok(&["allow", CLIENT_V4, "--for", "1m"]);
    knock.ok(&["detach"]);
    let status = daemon.wait().unwrap();
    assert!(status.success(), "the daemon ended {status:?} with its log pipe closed");
}

/// Refused in one line that names `path` and contains `why`; exit status 1.
fn assert_refused(out: &Output, path: &Path, why: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "not refused: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "not one line:\n{stderr}");
    assert!(stderr.starts_with("knock-xdp: "), "{stderr}");
    assert!(stderr.contains(&path.display().to_string()), "does not name {path:?}: {stderr}");
    assert!(stderr.contains(why), "expected '{why}' in: {stderr}");
}

#[test]
fn a_state_dir_others_can_write_is_refused_and_left_as_it_is() {
    if !privileged("a_state_dir_others_can_write_is_refused_and_left_as_it_is") {
        return;
    }
    let lab = Lab::new();
    let knock = Instance::new(&lab.server, Entry::NetnsExec);
    let dir = knock.state_path();
    fs::create_dir_all(dir).unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o777)).unwrap();
    for args in [&["protect", "22"][..], &["attach", &lab.server_if], &["client", "add", "eve"]] {
        assert_refused(&knock.cli(args), dir, "writable by group and others (mode 0777)");
    }
    assert_eq!(fs::read_dir(dir).unwrap().count(), 0, "a refused command wrote into {dir:?}");
    assert!(!has_xdp(&lab.server, &lab.server_if), "a refused attach attached");

    // Only root's: accepted. A file in it that someone else owns: refused.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
    knock.ok(&["protect", "22"]);
    let state_file = dir.join("state.toml");
    let before = fs::read(&state_file).unwrap();
    std::os::unix::fs::chown(&state_file, Some(65534), None).unwrap();
    assert_refused(&knock.cli(&["protect", "80"]), &state_file, "owned by uid 65534, not root");
    assert_eq!(fs::read(&state_file).unwrap(), before, "a refused protect changed the state");
}

#[test]
fn symlinks_planted_at_the_temporary_and_audit_files_are_not_followed() {
    if !privileged("symlinks_planted_at_the_temporary_and_audit_files_are_not_followed") {
        return;
    }
    let lab = Lab::with_service();
    let knock = lab.protecting_daemon(Entry::NetnsExec, &[]);
    knock.add_client("door", &["--static", "7101,7102,7103"]);
    let dir = knock.state_path().to_owned();
    let target = knock.side_file("target");
    fs::write(&target, "precious\n").unwrap();
    let state_file = dir.join("state.toml");
    let state_before = fs::read(&state_file).unwrap();

    // At the temporary file's name: every command refuses the directory,
    // and the daemon itself, asked directly, writes nothing through it.
    let tmp = dir.join("state.tmp");
    std::os::unix::fs::symlink(&target, &tmp).unwrap();
    assert_refused(&knock.cli(&["protect", "8023"]), &tmp, "symbolic link");
    let request = Request::Protect { ports: vec!["8023/tcp".parse().unwrap()] };
    let err = control::request::<Changed>(&StateDir::new(&dir), &request).unwrap_err();
    assert!(format!("{err:#}").contains("not following"), "{err:#}");
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n", "the link was followed");
    assert_eq!(fs::read(&state_file).unwrap(), state_before);
    assert!(fs::symlink_metadata(&tmp).unwrap().is_symlink(), "the planted link was replaced");
    fs::remove_file(&tmp).unwrap();

    // At the audit file: the daemon's record of an opening is refused,
    // the opening itself still happens.
    let audit = dir.join("audit.jsonl");
    let _ = fs::remove_file(&audit);
    std::os::unix::fs::symlink(&target, &audit).unwrap();
    let knocks = tcp_knocks(&[7101, 7102, 7103]);
    lab.send_knocks(CLIENT_V4, SERVER_V4, &knocks, Duration::from_millis(20));
    assert!(lab.tcp_exchange(CLIENT_V4, SERVER_V4, SERVICE), "the knock did not open the door");
    eventually("the daemon did not report the refused audit write", || {
        knock.daemon_log().contains("symbolic link: not following it")
    });
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n", "the link was followed");
    assert!(fs::symlink_metadata(&audit).unwrap().is_symlink());
    fs::remove_file(&audit).unwrap();
}

#[test]
fn under_ip_netns_exec_a_fail_closed_start_is_refused_and_status_tells_the_truth() {
    if !privileged("under_ip_netns_exec_a_fail_closed_start_is_refused_and_status_tells_the_truth")
    {
        return;
    }
    let lab = Lab::with_service();
    let mut knock = Instance::new(&lab.server, Entry::NetnsExec);
    knock.protect_service();

    // Fail closed is what `kill -9` would silently lose here: refused, in
    // one line that says how to run it instead, and nothing is attached.
    let out = knock.cli_within(&["attach", &lab.server_if], Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "not one line:\n{stderr}");
    let nsenter = format!("nsenter --net=/run/netns/{}", lab.server.name);
    assert!(stderr.contains(&nsenter) && stderr.contains("--fail-open"), "{stderr}");
    assert!(!has_xdp(&lab.server, &lab.server_if), "a refused start attached");
    assert_eq!(lab.tcp_state(SERVER_V4, SERVICE), PortState::Open);

    // With --fail-open it starts, and says what a kill does.
    knock.attach(&[&lab.server_if, "--fail-open"]);
    assert_eq!(lab.tcp_state(SERVER_V4, SERVICE), PortState::Filtered);
    let status = knock.status();
    assert_eq!(
        (status["fail_open"].as_bool(), status["survives_kill"].as_bool()),
        (Some(true), Some(false))
    );
    let text = knock.ok(&["status"]);
    assert!(
        text.contains("nothing pinned") && text.contains("protection ends with this daemon"),
        "{text}"
    );
    assert!(!text.contains("stays attached"), "{text}");
    knock.kill_daemon();
    eventually("the fail-open program outlived its daemon", || {
        !has_xdp(&lab.server, &lab.server_if)
    });

    // Through nsenter the pins are the host's: it says the program stays,
    // and it does.
    let mut knock = Instance::new(&lab.server, Entry::NsenterNet);
    knock.attach(&[&lab.server_if]);
    knock.protect_service();
    assert_eq!(knock.status()["survives_kill"], true);
    let text = knock.ok(&["status"]);
    assert!(text.contains("stays attached until 'knock-xdp detach'"), "{text}");
    knock.kill_daemon();
    assert!(has_xdp(&lab.server, &lab.server_if), "the program went with the daemon");
    assert_eq!(lab.tcp_state(SERVER_V4, SERVICE), PortState::Filtered);
    // (The instance's drop detaches what the killed daemon left.)
    let _ = run;
}
