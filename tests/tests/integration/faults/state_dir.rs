//! A state directory that turns read-only or fills up under a running
//! daemon, and a bpffs that cannot be mounted.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use knock_tests::{
    lab::{self, CLIENT2_V4, Entry, Instance, Lab, SERVER_V4, SERVICE, field, has_xdp, run},
    privileged,
};
use knock_userspace::{
    clients::ClientStore,
    state::{State, StateDir},
};

use super::{SERVICE2, lab_with_services};

/// A mount over a directory, lazily unmounted on drop (even when the test
/// fails), so nothing stays mounted over /tmp.
struct Mount {
    dir: PathBuf,
    mounted: bool,
}

impl Mount {
    /// Binds `dir` onto itself, then makes that bind read-only.
    fn read_only(dir: &Path) -> Self {
        let path = dir.to_str().unwrap();
        run("mount", &["--bind", path, path]);
        let mount = Self { dir: dir.to_owned(), mounted: true };
        run("mount", &["-o", "remount,bind,ro", path]);
        mount
    }

    /// A small tmpfs on `dir` (created if needed), private to root like a
    /// state directory.
    fn tmpfs(dir: &Path, size: &str) -> Self {
        fs::create_dir_all(dir).unwrap();
        let options = format!("size={size},mode=0700");
        run("mount", &["-t", "tmpfs", "-o", &options, "tmpfs", dir.to_str().unwrap()]);
        Self { dir: dir.to_owned(), mounted: true }
    }

    fn unmount(&mut self) {
        if std::mem::take(&mut self.mounted) {
            run("umount", &["-l", self.dir.to_str().unwrap()]);
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// What `list --json`, `status --json` and `client list --json` report that a
/// refused change must leave alone (counters and clocks move by themselves).
fn observable(knock: &Instance) -> serde_json::Value {
    let list = knock.list();
    let status = knock.status();
    let clients: serde_json::Value =
        serde_json::from_str(&knock.ok(&["client", "list", "--json"])).unwrap();
    serde_json::json!({
        "protected": list["protected"],
        "permanent": list["permanent"],
        "allowed": field(&list["allowed"], "addr"),
        "pid": status["pid"],
        "program_id": status["program_id"],
        "interfaces": status["interfaces"],
        "clients": status["clients"],
        "sequences": status["sequences"],
        "client_list": clients,
    })
}

/// A failed command: exit status 1, one `knock-xdp: ...` line naming the
/// state directory and `reason`, no panic.
fn assert_refused(knock: &Instance, args: &[&str], reason: &str) {
    let out = knock.cli(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?} was not refused: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: not one line:\n{stderr}");
    assert!(stderr.starts_with("knock-xdp: "), "{args:?}: {stderr}");
    assert!(stderr.contains(reason), "{args:?}: expected '{reason}' in: {stderr}");
    let dir = knock.state_path().display().to_string();
    assert!(stderr.contains(&dir), "{args:?}: the message does not name {dir}: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "{stderr}");
}

/// The daemon protects SERVICE and knows one client.
fn protecting_daemon(lab: &Lab, knock: &mut Instance) {
    knock.attach(&[&lab.server_if]);
    knock.ok(&["protect", &format!("{SERVICE}/tcp")]);
    knock.add_client("first", &[]);
}

/// With the state directory unwritable (for `reason`), each persisted change
/// is refused and nothing changes: not the kernel, not what the daemon
/// reports, not a byte on disk (`skip` names a file the test itself put there).
fn persisted_changes_are_refused(lab: &Lab, knock: &Instance, reason: &str, skip: &str) {
    let before = observable(knock);
    let files = knock.state_files(&[skip]);
    let profile = knock.side_file("second.knock");
    let profile_arg = profile.to_str().unwrap();
    // A temporary `allow ADDR` is kept in the kernel only, so it needs no
    // disk; `--permanent` is the allow that is persisted.
    let changes: [&[&str]; 3] = [
        &["protect", &format!("{SERVICE2}/tcp")],
        &["allow", &format!("{CLIENT2_V4}/32"), "--permanent"],
        &["client", "add", "second", "--profile-out", profile_arg],
    ];
    for args in changes {
        assert_refused(knock, args, reason);
    }
    let profile_written = profile.exists();
    let _ = fs::remove_file(&profile);
    assert!(!profile_written, "a refused client add wrote its profile");

    // The refused protect is not in the kernel: the second service answers.
    assert!(
        lab.tcp_exchange(CLIENT2_V4, SERVER_V4, SERVICE2),
        "the refused protect hid {SERVICE2}"
    );
    // The refused allow is not either, and the first port is still protected.
    assert!(
        !lab.tcp_exchange(CLIENT2_V4, SERVER_V4, SERVICE),
        "a stranger got in: the refused allow took effect, or protection lapsed"
    );
    assert_eq!(observable(knock), before, "a refused change shows in list/status");
    assert_eq!(knock.state_files(&[skip]), files, "a refused change touched the state");
    assert!(!knock.daemon_log().contains("panicked"), "{}", knock.daemon_log());
}

#[test]
fn a_read_only_state_dir_refuses_changes_and_keeps_protection() {
    if !privileged("a_read_only_state_dir_refuses_changes_and_keeps_protection") {
        return;
    }
    let lab = lab_with_services();
    // nsenter shares this mount namespace, so the daemon sees the mount below.
    let mut knock = Instance::new(&lab.server, Entry::NsenterNet);
    protecting_daemon(&lab, &mut knock);

    let mut read_only = Mount::read_only(knock.state_path());
    persisted_changes_are_refused(&lab, &knock, "Read-only file system", "");

    // Writable again, the same protect goes through: the failures came from
    // the read-only directory, and the daemon is still in working order.
    read_only.unmount();
    knock.ok(&["protect", &format!("{SERVICE2}/tcp")]);
    assert!(!lab.tcp_exchange(CLIENT2_V4, SERVER_V4, SERVICE2), "{SERVICE2} is not protected now");
}

#[test]
fn a_full_state_dir_refuses_changes_and_loses_nothing() {
    if !privileged("a_full_state_dir_refuses_changes_and_loses_nothing") {
        return;
    }
    let lab = lab_with_services();
    let mut knock = Instance::new(&lab.server, Entry::NsenterNet);
    let _tmpfs = Mount::tmpfs(knock.state_path(), "256k");
    protecting_daemon(&lab, &mut knock);
    let state_file = knock.state_path().join("state.toml");
    let saved = fs::read(&state_file).unwrap();

    // Fill the file system to the last page.
    let filler = knock.state_path().join("filler");
    let mut file = fs::File::create(&filler).unwrap();
    loop {
        match file.write_all(&[0u8; 4096]) {
            Ok(()) => {}
            Err(err) if err.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(err) => panic!("filling {}: {err}", filler.display()),
        }
    }
    drop(file);
    let probe = knock.state_path().join("probe");
    let not_even_a_byte = fs::write(&probe, b"x").unwrap_err();
    assert_eq!(not_even_a_byte.raw_os_error(), Some(libc::ENOSPC), "the tmpfs is not full");
    fs::remove_file(&probe).unwrap();

    persisted_changes_are_refused(&lab, &knock, "No space left on device", "filler");

    // The last state written is whole and parses.
    assert_eq!(fs::read(&state_file).unwrap(), saved);
    let state = StateDir::new(knock.state_path());
    let expected =
        State { protected: [format!("{SERVICE}/tcp").parse().unwrap()].into(), ..State::default() };
    assert_eq!(state.load().unwrap(), expected);
    let names: Vec<String> =
        ClientStore::new(&state).load().unwrap().into_iter().map(|c| c.profile.name).collect();
    assert_eq!(names, ["first"]);

    // With room again, a daemon started from the files has it all, and
    // nothing of the refused changes.
    fs::remove_file(&filler).unwrap();
    knock.ok(&["detach"]);
    assert!(knock.wait_daemon().success(), "{}", knock.daemon_log());
    knock.attach(&[&lab.server_if]);
    let list = knock.list();
    assert_eq!(list["protected"], serde_json::json!([{ "port": SERVICE, "proto": "tcp" }]));
    assert_eq!(list["permanent"], serde_json::json!([]));
    let clients: serde_json::Value =
        serde_json::from_str(&knock.ok(&["client", "list", "--json"])).unwrap();
    assert_eq!(field(&clients, "name"), ["first"]);
    assert!(!lab.tcp_exchange(CLIENT2_V4, SERVER_V4, SERVICE), "protection lost over the restart");
    assert!(lab.tcp_exchange(CLIENT2_V4, SERVER_V4, SERVICE2));
    knock.ok(&["protect", &format!("{SERVICE2}/tcp")]);
}

#[test]
fn bpffs_that_cannot_be_mounted_is_a_clear_error() {
    if !privileged("bpffs_that_cannot_be_mounted_is_a_clear_error") {
        return;
    }
    let lab = lab_with_services();
    let mut knock = Instance::new(&lab.server, Entry::NetnsExec);
    fs::create_dir_all(knock.state_path()).unwrap();
    // A private mount namespace whose /sys/fs is an empty read-only tmpfs:
    // no /sys/fs/bpf, and no way to create it. (`ip netns exec` would mount
    // a fresh /sys over it, hence nsenter.) Pins there could not outlive
    // the daemon, so only a fail-open start gets as far as mounting.
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o ro,size=4k tmpfs /sys/fs && exec "$@""#)
        .arg("sh")
        .arg("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.server.name))
        .arg("--")
        .arg(lab::binary())
        .arg("--state-dir")
        .arg(knock.state_path())
        .args(["attach", &lab.server_if, "--fail-open"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "not one line:\n{stderr}");
    assert!(stderr.starts_with("knock-xdp: ") && stderr.contains("bpffs"), "{stderr}");
    assert!(stderr.contains("/sys/fs/bpf"), "{stderr}");
    assert!(!has_xdp(&lab.server, &lab.server_if), "a refused attach left a program attached");
    assert!(!knock.pin_dir().exists(), "a refused attach pinned something");

    // `ip netns exec` starts every process with a fresh /sys and so without
    // bpffs: the daemon mounts it itself, and the refused start above left
    // nothing that stands in the way.
    let fs_type =
        run("ip", &["netns", "exec", &lab.server.name, "stat", "-f", "-c", "%T", "/sys/fs/bpf"]);
    assert_ne!(fs_type.trim(), "bpf_fs", "bpffs is already mounted under ip netns exec");
    knock.attach(&[&lab.server_if]);
    knock.ok(&["protect", &format!("{SERVICE}/tcp")]);
    assert!(has_xdp(&lab.server, &lab.server_if));
    assert!(!lab.tcp_exchange(CLIENT2_V4, SERVER_V4, SERVICE));
}
