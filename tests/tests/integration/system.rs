//! The systemd unit, shell completions and the man page.

use std::{fs, process::Command};

use knock_tests::{lab::binary, privileged};

#[test]
fn install_writes_a_unit_that_systemd_accepts_and_uninstall_removes_it() {
    if !privileged("install_writes_a_unit_that_systemd_accepts_and_uninstall_removes_it") {
        return;
    }
    let base = std::env::temp_dir().join(format!("knock-units-{}", std::process::id()));
    let units = base.join("units");
    fs::create_dir_all(&units).unwrap();
    let state = base.join("state");
    let run = |args: &[&str]| {
        Command::new(binary()).arg("--state-dir").arg(&state).args(args).output().unwrap()
    };
    let units_arg = units.to_str().unwrap();
    let out = run(&["install", "--iface", "lo", "--unit-dir", units_arg]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let unit = units.join("knock-xdp.service");
    let text = fs::read_to_string(&unit).unwrap();
    for needle in [
        "Restart=always",
        "CAP_BPF",
        "CAP_NET_ADMIN",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        &format!("--state-dir {} attach lo", state.display()),
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    let verify =
        Command::new("systemd-analyze").arg("verify").arg(&unit).output().expect("systemd-analyze");
    assert!(
        verify.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );

    let bad = run(&["install", "--iface", "no-such-if0", "--unit-dir", units_arg]);
    assert!(!bad.status.success());
    let out = run(&["uninstall", "--unit-dir", units_arg]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!unit.exists());
    assert!(
        !run(&["uninstall", "--unit-dir", units_arg]).status.success(),
        "a second uninstall succeeded"
    );
    let _ = fs::remove_dir_all(&base);
}

#[test]
fn completions_and_the_man_page_come_from_the_cli() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(binary()).args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("knock-xdp") && text.contains("protect"), "{shell}");
    }
    // bash accepts the script and registers the completion.
    let script = Command::new(binary()).args(["completions", "bash"]).output().unwrap().stdout;
    let check = Command::new("bash")
        .arg("-c")
        .arg("source /dev/stdin && complete -p knock-xdp")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(&script)?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));

    let man = Command::new(binary()).arg("manpage").output().unwrap();
    let text = String::from_utf8_lossy(&man.stdout);
    assert!(
        man.status.success() && text.contains(".TH knock-xdp 1") && text.contains("attach"),
        "{text}"
    );
}
