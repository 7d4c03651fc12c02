//! The two doors of the fwknop part: knock-xdp's daemon with an SPA
//! client, and fwknopd with its iptables chain. Set
//! `KNOCK_BENCH_FWKNOP_LOG` to see fwknopd's log when it stops.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail, ensure};
use knock_common::spa::{self, DATAGRAM_LEN, Request};
use knock_userspace::profile::{self, Knock, Profile};

use super::{Door, SERVICE, SPA_PORT, noise};
use crate::{
    bench::host::{in_ns, sh},
    lab::{self, Entry, Instance, Lab},
};

// ---------------------------------------------------------------- knock-xdp

pub struct KnockXdp {
    daemon: Instance,
    profile: PathBuf,
    key: [u8; 32],
    index: u16,
}

impl KnockXdp {
    pub fn new(lab: &Lab) -> Result<Self> {
        let mut daemon = Instance::new(&lab.server, Entry::NetnsExec);
        daemon.attach(&[&lab.server_if]);
        daemon.ok(&["protect", &format!("{SERVICE}/tcp")]);
        let range = format!("{SPA_PORT}-{SPA_PORT}");
        let profile = daemon.add_client("bench-spa", &["--spa", "--ports", &range]);
        let parsed = Profile::read(&profile)?;
        let Knock::Spa { index, .. } = parsed.knock else { bail!("not an SPA profile") };
        Ok(Self { key: parsed.spa_key()?, index: index as u16, daemon, profile })
    }
}

fn unix_now() -> u32 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as u32)
}

impl Door for KnockXdp {
    fn pid(&self) -> u32 {
        self.daemon.status()["pid"].as_u64().unwrap_or(0) as u32
    }

    fn close(&self) -> Result<()> {
        // Fails when the client is not allowed: then the door is shut already.
        self.daemon.cli(&["revoke", lab::CLIENT_V4]);
        Ok(())
    }

    fn payload(&self) -> Result<Vec<u8>> {
        let request = Request {
            index: self.index,
            unix_secs: unix_now(),
            nonce: profile::random_bytes()?,
            admit: None,
        };
        Ok(spa::datagram(&self.key, &request, lab::SERVER_V4.parse()?).to_vec())
    }

    fn client(&self) -> Command {
        let mut command = Command::new(lab::binary());
        command.args(["knock", lab::SERVER_V4, "--profile"]).arg(&self.profile);
        command
    }

    fn flood_payloads(&self, kind: usize, n: u64) -> Result<Vec<Vec<u8>>> {
        let now = unix_now();
        Ok((0..n)
            .map(|i| {
                let mut payload: Vec<u8> = (0..DATAGRAM_LEN).map(|j| noise(i, j)).collect();
                if kind == 1 {
                    // A well-formed header, the real index, a fresh time: only the MAC is wrong.
                    payload[0] = spa::VERSION;
                    payload[1] = 0;
                    payload[2..4].copy_from_slice(&self.index.to_be_bytes());
                    payload[4..8].copy_from_slice(&now.to_be_bytes());
                    payload[20..36].fill(0);
                }
                payload
            })
            .collect())
    }
}

// ---------------------------------------------------------------- fwknopd

pub struct Fwknopd {
    child: Child,
    dir: PathBuf,
    ns: String,
    keys: (String, String),
}

impl Fwknopd {
    /// With `udp_server`, fwknopd reads datagrams from a UDP socket
    /// (`ENABLE_UDP_SERVER`) instead of capturing them with libpcap.
    pub fn new(lab: &Lab, udp_server: bool) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("knock-bench-fwknop-{}", lab.id));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("run"))?;
        let keys =
            (base64(&profile::random_bytes::<32>()?), base64(&profile::random_bytes::<64>()?));
        // fwknopd refuses config files others may read.
        let private = |name: &str, text: String| -> Result<PathBuf> {
            let path = dir.join(name);
            fs::write(&path, text)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
            Ok(path)
        };
        let mut conf = format!("PCAP_INTF {}\n", lab.server_if);
        if udp_server {
            conf.push_str(&format!("ENABLE_UDP_SERVER Y\nUDPSERV_PORT {SPA_PORT}\n"));
        }
        let conf = private("fwknopd.conf", conf)?;
        let access = private(
            "access.conf",
            format!(
                "SOURCE ANY\nOPEN_PORTS tcp/{SERVICE}\nKEY_BASE64 {}\nHMAC_KEY_BASE64 {}\nFW_ACCESS_TIMEOUT 60\n",
                keys.0, keys.1
            ),
        )?;
        let ns = lab.server.name.clone();
        // The shut door; fwknopd puts its jump to FWKNOP_INPUT ahead of it.
        in_ns(
            &ns,
            "iptables",
            &["-A", "INPUT", "-p", "tcp", "--dport", &SERVICE.to_string(), "-j", "DROP"],
        )?;
        let log = fs::File::create(dir.join("fwknopd.log"))?;
        let run = dir.join("run");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "fwknopd", "-f", "-c"])
            .arg(&conf)
            .arg("-a")
            .arg(&access)
            .arg("-r")
            .arg(&run)
            .arg("-p")
            .arg(run.join("fwknopd.pid"))
            .arg("-d")
            .arg(run.join("digest.cache"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start fwknopd")?;
        let fwknopd = Self { child, dir, ns, keys };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !in_ns(&fwknopd.ns, "iptables", &["-S", "INPUT"])?.contains("FWKNOP_INPUT") {
            ensure!(
                Instant::now() < deadline,
                "fwknopd did not start: {}",
                fs::read_to_string(fwknopd.dir.join("fwknopd.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(50));
        }
        // Its capture opens after the chains are set up.
        thread::sleep(Duration::from_millis(500));
        Ok(fwknopd)
    }

    fn client_args(&self) -> Vec<String> {
        [
            "--no-rc-file",
            "--no-save-args",
            "-A",
            &format!("tcp/{SERVICE}"),
            "-a",
            lab::CLIENT_V4,
            "-D",
            lab::SERVER_V4,
            "--key-base64-rijndael",
            &self.keys.0,
            "--key-base64-hmac",
            &self.keys.1,
            "--use-hmac",
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, as fwknop's key options take it.
fn base64(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(char::from(B64[(n >> (18 - 6 * k) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Door for Fwknopd {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn close(&self) -> Result<()> {
        in_ns(&self.ns, "iptables", &["-F", "FWKNOP_INPUT"]).map(drop)
    }

    fn payload(&self) -> Result<Vec<u8>> {
        let file = self.dir.join("packet");
        let mut args = self.client_args();
        args.extend(["-T", "-B"].map(str::to_owned));
        args.push(file.display().to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sh("fwknop", &args)?;
        Ok(fs::read_to_string(&file)?.trim().as_bytes().to_vec())
    }

    fn client(&self) -> Command {
        let mut command = Command::new("fwknop");
        command.args(self.client_args());
        command
    }

    fn flood_payloads(&self, kind: usize, n: u64) -> Result<Vec<Vec<u8>>> {
        // A real packet's size; for kind 1 a real packet whose HMAC (its
        // last 43 base64 characters) is replaced, so fwknopd decodes it and
        // computes the HMAC before refusing it.
        let real = self.payload()?;
        Ok((0..n)
            .map(|i| match kind {
                0 => (0..real.len()).map(|j| noise(i, j)).collect(),
                _ => {
                    let mut p = real.clone();
                    let len = p.len();
                    for (j, byte) in p[len - 43..].iter_mut().enumerate() {
                        *byte = B64[usize::from(noise(i, j)) % 64];
                    }
                    p
                }
            })
            .collect())
    }
}

impl Drop for Fwknopd {
    fn drop(&mut self) {
        if std::env::var_os("KNOCK_BENCH_FWKNOP_LOG").is_some() {
            eprintln!(
                "fwknopd exited: {:?}\n{}",
                self.child.try_wait(),
                fs::read_to_string(self.dir.join("fwknopd.log")).unwrap_or_default()
            );
        }
        // SAFETY: plain kill(2) on our own child (`ip netns exec` execs fwknopd).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
