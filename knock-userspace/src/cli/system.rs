//! Fitting knock-xdp into the system: a systemd unit, shell completions and
//! a man page, all generated from the one CLI definition.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::CommandFactory as _;

use super::Cli;
use crate::{
    config::{Config, DEFAULT_CONFIG},
    state::{StateDir, write_atomically},
};

pub const UNIT_NAME: &str = "knock-xdp.service";
pub const DEFAULT_UNIT_DIR: &str = "/etc/systemd/system";

#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// Interfaces the service attaches to (default: `interfaces` of the
    /// config file, read at every start).
    #[arg(long = "iface", value_name = "IFACE")]
    ifaces: Vec<String>,
    /// Where to write knock-xdp.service.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_UNIT_DIR)]
    unit_dir: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct UninstallArgs {
    #[arg(long, value_name = "DIR", default_value = DEFAULT_UNIT_DIR)]
    unit_dir: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    shell: clap_complete::Shell,
}

/// The unit: restarted always (a new daemon takes over what the old one left
/// attached), with only the capabilities XDP needs and the file system
/// read-only but for the state directory and bpffs. With no interfaces it
/// runs `attach` alone, driven by the config file (`config`, when not the
/// default one); `systemctl reload` sends SIGHUP, which re-reads it.
pub fn unit(binary: &Path, state: &StateDir, ifaces: &[String], config: Option<&Path>) -> String {
    let state_dir = state.path().display();
    let config = config.map_or_else(String::new, |path| format!(" --config {}", path.display()));
    let attach = if ifaces.is_empty() {
        "attach".to_owned()
    } else {
        format!("attach {}", ifaces.join(" "))
    };
    format!(
        "# Written by 'knock-xdp install'; 'knock-xdp uninstall' removes it.
[Unit]
Description=knock-xdp: port knocking in the kernel (XDP)
After=network-pre.target
Wants=network-pre.target

[Service]
Type=exec
ExecStart={binary} --state-dir {state_dir}{config} {attach}
ExecReload=/bin/kill -HUP $MAINPID
Restart=always
RestartSec=1
CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_SYS_ADMIN
AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_SYS_ADMIN
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={state_dir} /sys/fs/bpf
ProtectHome=yes
PrivateTmp=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
LockPersonality=yes
MemoryDenyWriteExecute=yes

[Install]
WantedBy=multi-user.target
",
        binary = binary.display(),
    )
}

fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn systemctl(args: &[&str]) -> Result<()> {
    let status = Command::new("systemctl").args(args).status().context("cannot run systemctl")?;
    if !status.success() {
        bail!("systemctl {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// `config` is the `--config` given, if any: the unit then names it too.
pub fn install(state: &StateDir, config: Option<&Path>, args: InstallArgs) -> Result<()> {
    let InstallArgs { ifaces, unit_dir } = &args;
    // The file the unit's daemon will read: it must read now, and without
    // --iface it must say where to attach.
    let loaded = Config::load(config)?;
    let config: Option<PathBuf> = config
        .map(|path| {
            fs::canonicalize(path).with_context(|| format!("cannot resolve {}", path.display()))
        })
        .transpose()?;
    if ifaces.is_empty() && loaded.interfaces.is_empty() {
        bail!(
            "--iface is required unless the config file ({}) lists `interfaces`, which the \
             unit then attaches to",
            config.as_deref().unwrap_or(Path::new(DEFAULT_CONFIG)).display()
        );
    }
    let attach_to = if ifaces.is_empty() { &loaded.interfaces } else { ifaces };
    for iface in attach_to {
        crate::loader::if_index(iface)?;
    }
    let binary = std::env::current_exe().context("cannot find the knock-xdp binary")?;
    let path = unit_dir.join(UNIT_NAME);
    if !unit_dir.is_dir() {
        bail!("{} is not a directory", unit_dir.display());
    }
    state.create()?;
    write_atomically(&path, unit(&binary, state, ifaces, config.as_deref()).as_bytes())?;
    println!("wrote {}", path.display());
    if systemd_running() && unit_dir == Path::new(DEFAULT_UNIT_DIR) {
        systemctl(&["daemon-reload"])?;
        systemctl(&["enable", "--now", UNIT_NAME])?;
        println!("enabled and started {UNIT_NAME}");
    } else {
        println!(
            "systemd is not managing {}: enable it with 'systemctl enable --now {UNIT_NAME}'",
            unit_dir.display()
        );
    }
    Ok(())
}

pub fn uninstall(args: UninstallArgs) -> Result<()> {
    let unit_dir = &args.unit_dir;
    let path = unit_dir.join(UNIT_NAME);
    if !path.exists() {
        bail!("{} is not installed in {}", UNIT_NAME, unit_dir.display());
    }
    if systemd_running() && unit_dir == Path::new(DEFAULT_UNIT_DIR) {
        systemctl(&["disable", "--now", UNIT_NAME])?;
    }
    fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    if systemd_running() && unit_dir == Path::new(DEFAULT_UNIT_DIR) {
        systemctl(&["daemon-reload"])?;
    }
    println!("removed {}", path.display());
    Ok(())
}

pub fn completions(args: CompletionsArgs) {
    clap_complete::generate(args.shell, &mut Cli::command(), "knock-xdp", &mut std::io::stdout());
}

pub fn manpage() -> Result<()> {
    clap_mangen::Man::new(Cli::command())
        .render(&mut std::io::stdout())
        .context("cannot write the man page")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_without_interfaces_is_driven_by_the_config_file() {
        let state = StateDir::new(Path::new("/var/lib/knock-xdp"));
        let binary = Path::new("/usr/bin/knock-xdp");
        let fleet = Path::new("/etc/knock-xdp/fleet.toml");
        let text = unit(binary, &state, &[], Some(fleet));
        assert!(
            text.contains(
                "\nExecStart=/usr/bin/knock-xdp --state-dir /var/lib/knock-xdp --config \
                 /etc/knock-xdp/fleet.toml attach\n"
            ),
            "{text}"
        );
        assert!(text.contains("\nExecReload=/bin/kill -HUP $MAINPID\n"), "{text}");
        let text = unit(binary, &state, &["eth0".into(), "eth1".into()], None);
        assert!(
            text.contains(
                "\nExecStart=/usr/bin/knock-xdp --state-dir /var/lib/knock-xdp attach eth0 eth1\n"
            ),
            "{text}"
        );
    }
}
