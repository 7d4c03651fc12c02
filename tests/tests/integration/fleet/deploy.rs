//! How a fleet is deployed: a systemd unit driven by the config file, and
//! the Kubernetes manifest's config and client-sync script.

use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _, symlink},
    path::Path,
    process::Command,
};

use knock_tests::{
    lab::{ScratchDir, binary, host_cli, text},
    privileged,
};
use knock_userspace::{
    clients::{Client, ClientStore},
    config::Config,
    state::StateDir,
};

#[test]
fn a_fleet_unit_is_driven_by_the_config_file() {
    if !privileged("a_fleet_unit_is_driven_by_the_config_file") {
        return;
    }
    let base = ScratchDir::new("fleet-unit");
    let (units, state, config) = (base.join("units"), base.join("state"), base.join("config.toml"));
    fs::create_dir_all(&units).unwrap();
    let unit = units.join("knock-xdp.service");
    let install = || {
        let args = ["--config", config.to_str().unwrap(), "install", "--unit-dir"];
        host_cli(&state, &[&args[..], &[units.to_str().unwrap()]].concat())
    };
    fs::write(&config, "interfaces = [\"lo\"]\nprotected = [\"22/tcp\"]\nserver_name = \"web1\"\n")
        .unwrap();
    let out = install();
    assert!(out.status.success(), "{}", text(&out));
    let written = fs::read_to_string(&unit).unwrap();
    let exec = format!(
        "\nExecStart={} --state-dir {} --config {} attach\n",
        binary().display(),
        state.display(),
        config.display()
    );
    assert!(written.contains(&exec), "{exec} missing:\n{written}");
    assert!(written.contains("\nExecReload=/bin/kill -HUP $MAINPID\n"), "{written}");
    let verify =
        Command::new("systemd-analyze").arg("verify").arg(&unit).output().expect("systemd-analyze");
    assert!(verify.status.success(), "systemd-analyze verify: {}", text(&verify));
    assert_eq!(
        fs::metadata(&state).unwrap().permissions().mode() & 0o022,
        0,
        "the state directory is not writable by group or others"
    );

    // Without interfaces in the file, --iface is required, and nothing is written.
    fs::write(&config, "server_name = \"web1\"\n").unwrap();
    fs::remove_file(&unit).unwrap();
    let out = install();
    assert!(!out.status.success() && text(&out).contains("--iface is required"), "{}", text(&out));
    assert!(!unit.exists());
    // A broken server_name is refused in one line too.
    fs::write(&config, "interfaces = [\"lo\"]\nserver_name = \"web_1\"\n").unwrap();
    let out = install();
    assert!(!out.status.success() && text(&out).contains("server_name"), "{}", text(&out));
    assert!(!unit.exists());
}

/// The text of the ConfigMap key `key` (a `|` block) of the Kubernetes
/// manifest.
fn manifest_block(key: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/daemonset.yaml");
    let text = fs::read_to_string(&path).unwrap();
    let head = format!("  {key}: |");
    let body: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != head)
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.get(4..).unwrap_or(""))
        .collect();
    assert!(!body.is_empty(), "no {key} in {}", path.display());
    body.join("\n") + "\n"
}

/// `client add NAME --fleet` in the state directory `state`, as an admin
/// makes a fleet's clients; the client's server copy.
fn add_fleet_client(state: &StateDir, name: &str) -> Client {
    let out = host_cli(state.path(), &["client", "add", name, "--fleet"]);
    assert!(out.status.success(), "{}", text(&out));
    ClientStore::new(state).get(name).unwrap()
}

#[test]
fn the_kubernetes_manifest_gives_the_daemon_a_config_and_clients_it_accepts() {
    if !privileged("the_kubernetes_manifest_gives_the_daemon_a_config_and_clients_it_accepts") {
        return;
    }
    let base = ScratchDir::new("fleet-k8s");

    // The ConfigMap's config file reads, and names no server: each node's
    // name comes from the downward API.
    let config = base.join("config.toml");
    fs::write(&config, manifest_block("config.toml")).unwrap();
    let loaded = Config::load(Some(&config)).unwrap();
    assert!(!loaded.interfaces.is_empty() && !loaded.protected.is_empty());
    assert!(loaded.server_name.is_none());

    // A client's server copy, in a Secret volume as the kubelet lays one
    // out: every file a link into a timestamped directory through ..data.
    let scratch = StateDir::new(base.join("scratch"));
    let client = add_fleet_client(&scratch, "laptop");
    let secret = base.join("secret");
    let stamp = secret.join("..2026_11_26_12_00_00.000000000");
    fs::create_dir_all(&stamp).unwrap();
    fs::copy(scratch.path().join("clients/laptop.toml"), stamp.join("laptop.toml")).unwrap();
    symlink(stamp.file_name().unwrap(), secret.join("..data")).unwrap();
    symlink("..data/laptop.toml", secret.join("laptop.toml")).unwrap();

    // Mounted as the clients directory, those links would be refused.
    let direct = StateDir::new(base.join("linked"));
    direct.create().unwrap();
    fs::DirBuilder::new().mode(0o700).create(direct.path().join("clients")).unwrap();
    symlink(secret.join("laptop.toml"), direct.path().join("clients/laptop.toml")).unwrap();
    let err = format!("{:#}", direct.check().unwrap_err());
    assert!(err.contains("symbolic link"), "{err}");

    // The node's state directory, with a client the Secret no longer holds.
    let state = StateDir::new(base.join("state"));
    add_fleet_client(&state, "gone");

    let script = manifest_block("sync-clients.sh")
        .replace("/run/knock-xdp/clients", secret.to_str().unwrap())
        .replace("/var/lib/knock-xdp", state.path().to_str().unwrap())
        .replace("/etc/knock-xdp/config.toml", config.to_str().unwrap());
    let script_path = base.join("sync-clients.sh");
    fs::write(&script_path, script).unwrap();
    for run in 0..2 {
        let out = Command::new("sh").arg(&script_path).arg("--once").output().unwrap();
        assert!(out.status.success(), "run {run}: {}", text(&out));
        let clients: Vec<String> = fs::read_dir(state.path().join("clients"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(clients, ["laptop.toml"], "run {run}: only the Secret's clients, no leftovers");
        let copied = state.path().join("clients/laptop.toml");
        let meta = fs::symlink_metadata(&copied).unwrap();
        assert!(meta.file_type().is_file(), "a regular file, not a link");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // What the daemon checks and loads at start.
        state.check().unwrap();
        let loaded = ClientStore::new(&state).load().unwrap();
        assert_eq!(loaded, std::slice::from_ref(&client));
        assert!(loaded[0].profile.is_fleet());
    }
}
