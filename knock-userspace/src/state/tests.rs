use super::*;

fn temp_dir(name: &str) -> StateDir {
    let dir = std::env::temp_dir().join(format!("knock-state-test-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let state = StateDir::new(dir);
    state.create().unwrap();
    state
}

#[test]
fn state_round_trips() {
    let dir = temp_dir("roundtrip");
    assert_eq!(dir.load().unwrap(), State::default());
    let state = State {
        allow_nets: ["10.0.0.0/8".parse().unwrap(), "2001:db8::/32".parse().unwrap()].into(),
        protected: ["22/tcp".parse().unwrap(), "53/udp".parse().unwrap()].into(),
    };
    dir.save(&state).unwrap();
    assert_eq!(dir.load().unwrap(), state);
    fs::remove_dir_all(dir.path()).unwrap();
}

#[test]
fn broken_state_names_file_and_line_and_is_kept() {
    let dir = temp_dir("broken");
    let garbage = "protected = [\"22/tcp\"]\nthis is = not toml [\n";
    fs::write(dir.state_file(), garbage).unwrap();
    let err = format!("{:#}", dir.load().unwrap_err());
    assert!(err.contains("state.toml line 2"), "{err}");
    assert_eq!(fs::read_to_string(dir.state_file()).unwrap(), garbage);

    fs::write(dir.state_file(), "protected = [\"0/tcp\"]\n").unwrap();
    let err = format!("{:#}", dir.load().unwrap_err());
    assert!(err.contains("out of range"), "{err}");
    fs::remove_dir_all(dir.path()).unwrap();
}

#[test]
fn instance_ids_differ_per_directory_and_are_stable() {
    let a = temp_dir("id-a");
    let b = temp_dir("id-b");
    assert_ne!(a.instance_id().unwrap(), b.instance_id().unwrap());
    assert_eq!(a.instance_id().unwrap(), StateDir::new(a.path()).instance_id().unwrap());
    fs::remove_dir_all(a.path()).unwrap();
    fs::remove_dir_all(b.path()).unwrap();
}

#[test]
fn a_symlink_at_the_temporary_name_is_never_followed() {
    let dir = temp_dir("symlink");
    let target = dir.path().with_extension("target");
    fs::write(&target, "precious\n").unwrap();
    std::os::unix::fs::symlink(&target, dir.path().join("state.tmp")).unwrap();
    let state = State { protected: ["22/tcp".parse().unwrap()].into(), ..State::default() };
    let err = format!("{:#}", dir.save(&state).unwrap_err());
    assert!(err.contains("state.tmp") && err.contains("symbolic link"), "{err}");
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n");
    assert!(!dir.state_file().exists());
    assert!(fs::symlink_metadata(dir.path().join("state.tmp")).unwrap().is_symlink());
    // The check refuses the directory outright, naming the link.
    let err = format!("{:#}", dir.check().unwrap_err());
    assert!(err.contains("state.tmp is a symbolic link"), "{err}");

    // A regular file a crash left behind is replaced.
    fs::remove_file(dir.path().join("state.tmp")).unwrap();
    fs::write(dir.path().join("state.tmp"), "half a file").unwrap();
    dir.save(&state).unwrap();
    assert_eq!(dir.load().unwrap(), state);
    assert!(!dir.path().join("state.tmp").exists());
    fs::remove_file(target).unwrap();
    fs::remove_dir_all(dir.path()).unwrap();
}

#[test]
fn a_directory_or_file_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = temp_dir("modes");
    dir.check().unwrap();
    let set_mode =
        |path: &Path, mode| fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    set_mode(dir.path(), 0o777);
    let err = format!("{:#}", dir.check().unwrap_err());
    assert!(err.contains("writable by group and others (mode 0777)"), "{err}");
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
    set_mode(dir.path(), 0o700);
    dir.save(&State::default()).unwrap();
    set_mode(&dir.state_file(), 0o620);
    let err = format!("{:#}", dir.check().unwrap_err());
    assert!(err.contains("state.toml is writable by its group"), "{err}");
    set_mode(&dir.state_file(), 0o600);
    dir.check().unwrap();
    assert!(StateDir::new(dir.path().join("missing")).check().is_ok());
    fs::remove_dir_all(dir.path()).unwrap();
}

#[test]
fn only_one_holder_of_the_lock() {
    let dir = temp_dir("lock");
    let held = dir.try_lock().unwrap();
    assert!(held.is_some());
    assert!(dir.try_lock().unwrap().is_none());
    drop(held);
    assert!(dir.try_lock().unwrap().is_some());
    fs::remove_dir_all(dir.path()).unwrap();
}
