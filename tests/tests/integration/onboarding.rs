//! Onboarding end to end: profile URIs and QR codes, authenticator (TOTP)
//! clients checked against `oathtool`, passphrase clients, the audit log, and
//! removing a client.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use knock_tests::{
    lab::{CLIENT_V4, Entry, Instance, Lab, SERVER_V4, eventually, parse_sequence},
    privileged,
};

const SERVICE: u16 = 8022;
/// Cheap key derivation for tests; the default is 600000 iterations.
const COST: &str = "10000";

fn setup() -> (Lab, Instance) {
    let lab = Lab::new();
    lab.tcp_echo(SERVER_V4, SERVICE);
    let mut knock = Instance::new(&lab.server, Entry::NetnsExec);
    knock.attach(&[&lab.server_if]);
    knock.ok(&["protect", &format!("{SERVICE}/tcp")]);
    (lab, knock)
}

/// A secret file next to the instance's state directory, removed with it.
fn secret_file(knock: &Instance, name: &str, text: &str) -> PathBuf {
    let path = knock.side_file(name);
    fs::write(&path, text).unwrap();
    path
}

fn knock_with(lab: &Lab, args: &[&str]) -> (bool, String) {
    let mut all = vec!["knock", SERVER_V4];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--check", "8022"]);
    let out = lab.client_cli(&all);
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code() == Some(0), text)
}

/// Waits until at least `needed` is left in the current 30 s step.
fn away_from_step_boundary(needed: u64) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let left = 30 - now % 30;
    if left < needed {
        thread::sleep(Duration::from_secs(left) + Duration::from_millis(300));
    }
}

fn oathtool(base32: &str, at: Option<SystemTime>) -> String {
    let mut cmd = Command::new("oathtool");
    cmd.args(["--totp", "-b", base32]);
    if let Some(at) = at {
        cmd.arg("--now").arg(
            humantime::format_rfc3339_seconds(at)
                .to_string()
                .replace('T', " ")
                .replace('Z', " UTC"),
        );
    }
    let out = cmd.output().expect("oathtool (Debian package oathtool) must be installed");
    assert!(out.status.success(), "oathtool: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn an_authenticator_code_and_pin_open_the_door() {
    if !privileged("an_authenticator_code_and_pin_open_the_door") {
        return;
    }
    let (lab, knock) = setup();
    // Strong enough at this cost (a 6-digit PIN is refused: footguns.rs).
    let pin = secret_file(&knock, "pin", "correct-horse-battery\n");
    let wrong_pin = secret_file(&knock, "wrong-pin", "000000\n");
    let profile = knock.side_file("phone.knock");
    let out = knock.ok(&[
        "client",
        "add",
        "phone",
        "--totp",
        "--pin-file",
        pin.to_str().unwrap(),
        "--cost",
        COST,
        "--profile-out",
        profile.to_str().unwrap(),
    ]);
    let otpauth =
        out.lines().find(|l| l.starts_with("otpauth://totp/knock-xdp:phone?")).expect(&out);
    let base32 = otpauth.split("secret=").nth(1).unwrap().split('&').next().unwrap().to_owned();
    let text = fs::read_to_string(&profile).unwrap();
    assert!(
        text.contains("mode = \"totp\"") && !text.lines().any(|l| l.contains("secret =")),
        "{text}"
    );

    away_from_step_boundary(15);
    let profile_arg = profile.to_str().unwrap();
    // A wrong PIN with the right code does not open.
    let code = oathtool(&base32, None);
    let (opened, out) = knock_with(
        &lab,
        &["--profile", profile_arg, "--code", &code, "--pin-file", wrong_pin.to_str().unwrap()],
    );
    assert!(!opened, "a wrong PIN opened the door: {out}");
    // An old code (three steps ago or more: the previous, current and next
    // are accepted) with the right PIN does not open. Two steps share a
    // code once in a million; then the step before is taken, so the check
    // always runs.
    let old = (3..20)
        .map(|steps| oathtool(&base32, Some(SystemTime::now() - Duration::from_secs(30 * steps))))
        .find(|old| *old != code)
        .expect("seventeen steps in a row with the same code");
    let (opened, out) = knock_with(
        &lab,
        &["--profile", profile_arg, "--code", &old, "--pin-file", pin.to_str().unwrap()],
    );
    assert!(!opened, "an old code opened the door: {out}");
    // oathtool's code for now and the right PIN open it.
    let (opened, out) = knock_with(
        &lab,
        &["--profile", profile_arg, "--code", &code, "--pin-file", pin.to_str().unwrap()],
    );
    assert!(opened, "{out}\n{}", knock.daemon_log());
    // Single use, as for every client: the same code and PIN again from a
    // fresh start of the door are refused.
    knock.ok(&["revoke", CLIENT_V4]);
    let (opened, _) = knock_with(
        &lab,
        &["--profile", profile_arg, "--code", &code, "--pin-file", pin.to_str().unwrap()],
    );
    assert!(!opened, "a used code opened the door again");
    for f in [pin, wrong_pin, profile] {
        let _ = fs::remove_file(f);
    }
}

#[test]
fn a_profile_uri_alone_knocks_and_the_qr_code_decodes_to_it() {
    if !privileged("a_profile_uri_alone_knocks_and_the_qr_code_decodes_to_it") {
        return;
    }
    let (lab, knock) = setup();
    knock.add_client("laptop", &[]);
    let hidden = knock.ok(&["client", "show", "laptop"]);
    assert!(!hidden.contains("secret="), "{hidden}");
    let shown = knock.ok(&["client", "show", "laptop", "--reveal", "--qr"]);
    let uri = shown.lines().find(|l| l.starts_with("knock-xdp:profile?")).expect(&shown).to_owned();
    assert!(uri.contains("secret="), "{uri}");

    // The QR code printed in the terminal decodes (with zbarimg) to the URI.
    let image = knock.side_file("qr.pgm");
    write_pgm(&shown, &image);
    let out = Command::new("zbarimg")
        .args(["-q", "--raw"])
        .arg(&image)
        .output()
        .expect("zbarimg (zbar-tools)");
    let _ = fs::remove_file(&image);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        uri,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Knock with the URI only, from the environment: no file, nothing in argv.
    let out = lab.client_cli_env(
        &["knock", SERVER_V4, "--check", &SERVICE.to_string()],
        &[("KNOCK_XDP_PROFILE", &uri)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Turns the terminal QR code (Dense1x2, drawn for light text on a dark
/// background: blocks are light modules) into a PGM image, 4 px a module.
fn write_pgm(output: &str, path: &Path) {
    let rows: Vec<Vec<char>> = output
        .lines()
        .filter(|l| !l.is_empty() && l.chars().all(|c| " █▀▄".contains(c)))
        .map(|l| l.chars().collect())
        .collect();
    assert!(rows.len() > 10, "no QR code in:\n{output}");
    let width = rows.iter().map(Vec::len).max().unwrap();
    let mut modules: Vec<Vec<bool>> = Vec::new(); // true = dark
    for row in &rows {
        let (mut upper, mut lower) = (Vec::new(), Vec::new());
        for x in 0..width {
            let c = row.get(x).copied().unwrap_or(' ');
            upper.push(!matches!(c, '█' | '▀'));
            lower.push(!matches!(c, '█' | '▄'));
        }
        modules.push(upper);
        modules.push(lower);
    }
    let scale = 4;
    let (w, h) = (width * scale, modules.len() * scale);
    let mut pgm = format!("P5 {w} {h} 255\n").into_bytes();
    for row in &modules {
        for _ in 0..scale {
            for &dark in row {
                pgm.extend(std::iter::repeat_n(if dark { 0u8 } else { 255 }, scale));
            }
        }
    }
    fs::write(path, pgm).unwrap();
}

#[test]
fn a_passphrase_client_knocks_and_a_wrong_passphrase_does_not() {
    if !privileged("a_passphrase_client_knocks_and_a_wrong_passphrase_does_not") {
        return;
    }
    let (lab, knock) = setup();
    let passphrase = secret_file(&knock, "pass", "correct horse battery staple\n");
    let wrong = secret_file(&knock, "wrong", "correct horse battery stable\n");
    let profile = knock
        .add_client("walker", &["--passphrase-file", passphrase.to_str().unwrap(), "--cost", COST]);
    let text = fs::read_to_string(&profile).unwrap();
    assert!(
        text.contains("mode = \"passphrase\"") && !text.lines().any(|l| l.contains("secret =")),
        "{text}"
    );
    let profile = profile.to_str().unwrap();
    let (opened, _) =
        knock_with(&lab, &["--profile", profile, "--passphrase-file", wrong.to_str().unwrap()]);
    assert!(!opened, "a wrong passphrase opened the door");
    let (opened, out) = knock_with(
        &lab,
        &["--profile", profile, "--passphrase-file", passphrase.to_str().unwrap()],
    );
    assert!(opened, "{out}");
    // Without a passphrase and no terminal to ask on: one clear error.
    let out = lab.client_cli(&["knock", SERVER_V4, "--profile", profile]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("passphrase"));
    for f in [passphrase, wrong] {
        let _ = fs::remove_file(f);
    }
}

#[test]
fn removing_a_client_ends_its_connections_and_knocks_and_the_log_shows_it_all() {
    if !privileged("removing_a_client_ends_its_connections_and_knocks_and_the_log_shows_it_all") {
        return;
    }
    let (lab, knock) = setup();
    let profile = knock.add_client("temp", &[]);
    let profile = profile.to_str().unwrap();
    let (opened, out) = knock_with(&lab, &["--profile", profile]);
    assert!(opened, "{out}");
    let mut session = lab.tcp_session(CLIENT_V4, SERVER_V4, SERVICE).unwrap();
    assert!(session.exchange());

    // A replay from the same source is refused and logged. knock-xdp itself
    // never sends a sequence twice, so the replay goes out from raw sockets.
    let knocked = out.lines().rev().find_map(|l| l.strip_prefix("knocked ")).expect(&out);
    let ports = knocked.split_once(": ").unwrap().1.split(" (").next().unwrap();
    lab.send_knocks(CLIENT_V4, SERVER_V4, &parse_sequence(ports), Duration::from_millis(20));
    // The daemon names the client only while it exists.
    eventually("the replay is never logged", || {
        knock.daemon_log().contains("replayed sequence refused")
    });
    assert_eq!(knock.status()["sequences"], 4);
    let out = knock.ok(&["client", "remove", "temp"]);
    assert!(out.contains("sources it admitted revoked: 1"), "{out}");
    assert!(!session.exchange(), "the client's connection survived its removal");
    assert_eq!(knock.status()["sequences"], 0, "the client's sequences are still installed");
    // The next slot's sequence was installed and unused: it no longer opens.
    let next_slot = humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(30));
    let (opened, _) = knock_with(&lab, &["--profile", profile, "--at", &next_slot.to_string()]);
    assert!(!opened, "a removed client's knock opened the door");

    let log = knock.ok(&["log", "--json", "--client", "temp"]);
    let records: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let opened: Vec<_> = records.iter().filter(|r| r["event"] == "opened").collect();
    assert_eq!(opened.len(), 1, "{log}");
    assert_eq!(opened[0]["source"], CLIENT_V4);
    assert_eq!(opened[0]["open_secs"], 30);
    assert!(opened[0]["slot"].as_u64().is_some());
    assert!(records.iter().any(|r| r["event"] == "replay"), "{log}");
    let human = knock.ok(&["log"]);
    assert!(human.contains("opened") && human.contains("temp"), "{human}");
}
