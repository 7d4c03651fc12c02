//! The setup most tests start from: echo services for a daemon to protect,
//! and a daemon attached to the server's end of the link.

use super::{Entry, Instance, Lab, SERVER_V4, SERVER_V6};

/// The TCP echo service the tests protect and knock for.
pub const SERVICE: u16 = 8022;
/// The UDP echo service, for tests that protect UDP too.
pub const UDP_SERVICE: u16 = 5353;

impl Lab {
    /// A lab whose server answers on the TCP echo service [`SERVICE`] at
    /// both its addresses.
    pub fn with_service() -> Self {
        let lab = Self::new();
        for addr in [SERVER_V4, SERVER_V6] {
            lab.tcp_echo(addr, SERVICE);
        }
        lab
    }

    /// A lab whose server answers on [`SERVICE`] and on the UDP echo
    /// service [`UDP_SERVICE`], at both its addresses.
    pub fn with_services() -> Self {
        let lab = Self::with_service();
        for addr in [SERVER_V4, SERVER_V6] {
            lab.udp_echo(addr, UDP_SERVICE);
        }
        lab
    }

    /// A state directory for knock-xdp commands in the server namespace,
    /// entered by `entry`; no daemon yet.
    pub fn instance(&self, entry: Entry) -> Instance {
        Instance::new(&self.server, entry)
    }

    /// A daemon attached to the server's end of the link:
    /// `attach SERVER_IF EXTRA...`.
    pub fn daemon(&self, entry: Entry, extra: &[&str]) -> Instance {
        let mut knock = self.instance(entry);
        let mut args = vec![self.server_if.as_str()];
        args.extend_from_slice(extra);
        knock.attach(&args);
        knock
    }

    /// A daemon ([`Lab::daemon`]) protecting [`SERVICE`]/tcp: the door the
    /// tests knock on.
    pub fn protecting_daemon(&self, entry: Entry, extra: &[&str]) -> Instance {
        let knock = self.daemon(entry, extra);
        knock.protect_service();
        knock
    }
}

impl Instance {
    /// `protect SERVICE/tcp`.
    pub fn protect_service(&self) {
        self.ok(&["protect", &format!("{SERVICE}/tcp")]);
    }

    /// `protect SERVICE/tcp UDP_SERVICE/udp`.
    pub fn protect_services(&self) {
        self.ok(&["protect", &format!("{SERVICE}/tcp"), &format!("{UDP_SERVICE}/udp")]);
    }
}
