//! The daemon's side: a state directory, the knock-xdp commands run
//! against it in the server namespace, and optionally a running daemon,
//! all removed on drop.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use knock_userspace::maps::TEST_ABORT_AFTER_WRITES;

use super::{Netns, next_id};

/// Makes `cmd` run with umask `mask`, whatever the test process has.
pub fn with_umask(cmd: &mut Command, mask: libc::mode_t) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: umask(2) is async-signal-safe and cannot fail.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(mask);
            Ok(())
        });
    }
}

/// The knock-xdp binary under test (built by `cargo xtask test`).
pub fn binary() -> PathBuf {
    let path = std::env::var_os("KNOCK_XDP_BIN").map(PathBuf::from).unwrap_or_else(|| {
        panic!("KNOCK_XDP_BIN is not set: run the tests with 'cargo xtask test'")
    });
    assert!(path.is_file(), "KNOCK_XDP_BIN={} does not exist", path.display());
    path
}

/// How the daemon (and the commands talking to it) enter the server namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// `ip netns exec`: a private /sys, hence a private bpffs, per process.
    /// Control commands must still reach the daemon. Pins there would die
    /// with the daemon, so it refuses to start fail-closed:
    /// [`Instance::attach`] adds `--fail-open`.
    NetnsExec,
    /// `nsenter --net`: only the network namespace; the host's bpffs, so a
    /// test can look at the pins.
    NsenterNet,
}

/// A state directory and the commands run against it; optionally a daemon.
pub struct Instance {
    pub state_dir: PathBuf,
    netns: String,
    entry: Entry,
    daemon: Option<Child>,
    log: PathBuf,
    /// Files next to the state directory (profiles, secrets), removed on drop.
    side_files: std::cell::RefCell<Vec<PathBuf>>,
    /// The umask its commands and daemon run with (the test's when `None`).
    umask: Option<libc::mode_t>,
}

impl Instance {
    pub fn new(netns: &Netns, entry: Entry) -> Self {
        let n = next_id();
        let state_dir = std::env::temp_dir().join(format!("knock-test-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&state_dir);
        let log = state_dir.with_extension("log");
        Self {
            state_dir,
            netns: netns.name.clone(),
            entry,
            daemon: None,
            log,
            side_files: Default::default(),
            umask: None,
        }
    }

    /// The command line of `knock-xdp ARGS` against this instance, to run
    /// with other stdio than [`Instance::cli`].
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = match self.entry {
            Entry::NetnsExec => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &self.netns]);
                c
            }
            Entry::NsenterNet => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{}", self.netns)).arg("--");
                c
            }
        };
        cmd.arg(binary()).arg("--state-dir").arg(&self.state_dir).args(args);
        cmd.env_remove("RUST_LOG").stdin(Stdio::null());
        if let Some(mask) = self.umask {
            with_umask(&mut cmd, mask);
        }
        cmd
    }

    /// Runs every later command and daemon with umask `mask` (say 0, to
    /// show that file modes are set, not left to the umask).
    pub fn set_umask(&mut self, mask: libc::mode_t) {
        self.umask = Some(mask);
    }

    /// Runs a knock-xdp command against this instance.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("cannot run knock-xdp")
    }

    /// Runs a command that must end within `limit` (a refused `attach`, say,
    /// that would otherwise run as a daemon); panics with its output if not.
    pub fn cli_within(&self, args: &[&str], limit: Duration) -> Output {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run knock-xdp");
        let deadline = Instant::now() + limit;
        while child.try_wait().expect("cannot wait for knock-xdp").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().expect("cannot wait for knock-xdp");
                panic!(
                    "knock-xdp {args:?} still ran after {limit:?}:\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("cannot wait for knock-xdp")
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "knock-xdp {args:?} failed ({}): {}\ndaemon log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.daemon_log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `knock-xdp attach` and waits until it answers `status`.
    /// Under `ip netns exec`, with `--fail-open` (see [`Entry::NetnsExec`]).
    pub fn attach(&mut self, args: &[&str]) {
        self.attach_env(args, &[]);
    }

    /// The same, with extra environment variables for the daemon.
    pub fn attach_env(&mut self, args: &[&str], env: &[(&str, &str)]) {
        assert!(self.daemon.is_none(), "daemon already started");
        fs::create_dir_all(self.state_dir.parent().unwrap()).unwrap();
        let log = fs::File::create(&self.log).unwrap();
        let mut all = vec!["attach"];
        all.extend_from_slice(args);
        if self.entry == Entry::NetnsExec && !args.contains(&"--fail-open") {
            all.push("--fail-open");
        }
        let child = self
            .command(&all)
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start the daemon");
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.cli(&["status"]).status.success() {
                return;
            }
            if let Some(status) = self.daemon.as_mut().unwrap().try_wait().unwrap() {
                // A daemon told to cut a rotation may do so at the first slot
                // boundary, a few ms after it was ready: it started; the
                // caller looks at how it ended.
                let hooked = env.iter().any(|(name, _)| *name == TEST_ABORT_AFTER_WRITES);
                if hooked && self.daemon_log().contains(" ready socket=") {
                    return;
                }
                panic!("the daemon exited ({status}):\n{}", self.daemon_log());
            }
            assert!(
                Instant::now() < deadline,
                "the daemon never became ready:\n{}",
                self.daemon_log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn daemon_log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the daemon process to exit (after `detach`); its exit status.
    pub fn wait_daemon(&mut self) -> std::process::ExitStatus {
        let mut child = self.daemon.take().expect("no daemon");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the daemon did not exit:\n{}", self.daemon_log());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `limit` for the daemon to end on its own: its exit
    /// status, or `None` while it runs on.
    pub fn daemon_exit_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = self.daemon.as_mut().expect("no daemon");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.daemon = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the daemon: no cleanup of its own.
    pub fn kill_daemon(&mut self) {
        let mut child = self.daemon.take().expect("no daemon");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// A path next to the state directory, for a file the test writes or
    /// has written (a profile, a PIN); removed with the instance.
    pub fn side_file(&self, name: &str) -> PathBuf {
        let path = self.state_dir.with_extension(name);
        let _ = fs::remove_file(&path);
        self.side_files.borrow_mut().push(path.clone());
        path
    }

    /// `client add NAME ARGS --profile-out FILE`; returns the profile's path.
    pub fn add_client(&self, name: &str, args: &[&str]) -> PathBuf {
        let path = self.side_file(&format!("{name}.knock"));
        let mut all = vec!["client", "add", name];
        all.extend_from_slice(args);
        let path_arg = path.to_str().unwrap().to_owned();
        all.extend_from_slice(&["--profile-out", &path_arg]);
        self.ok(&all);
        path
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            // SIGTERM first: a clean detach removes the pins.
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.state_dir.exists() {
            // Whatever a killed daemon left pinned goes too.
            let _ = self.command(&["detach"]).output();
        }
        let _ = fs::remove_dir_all(&self.state_dir);
        let _ = fs::remove_file(&self.log);
        for file in self.side_files.borrow().iter() {
            let _ = fs::remove_file(file);
        }
    }
}
