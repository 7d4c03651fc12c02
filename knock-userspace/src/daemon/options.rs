//! What `attach` is told, the defaults of what it may be told, and the
//! settings the program is given from them.

use std::time::Duration;

use knock_common::maps::Settings;

use crate::{config::FailedKnocks, loader::Mode};

pub struct AttachOptions {
    pub ifaces: Vec<String>,
    pub mode: Mode,
    /// How long a source that completed a sequence may open new connections.
    pub open_window: Duration,
    /// How long a whole sequence may take.
    pub knock_timeout: Duration,
    /// How long an admitted flow lives without a packet from its client.
    pub idle_timeout: Duration,
    /// Pin nothing: protection ends with the process, even on `kill -9`.
    pub fail_open: bool,
    /// Failed knocks a source prefix may make.
    pub failed_knocks: FailedKnocks,
    /// How far an SPA datagram's clock may be from ours.
    pub spa_skew: Duration,
    /// Serve Prometheus metrics here (checked: loopback unless public).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Accept the config file's too-wide networks on reload too (`--force`).
    pub force: bool,
    /// This server's identity, from which fleet clients' sequences derive
    /// (`--server-name`, else the config file's `server_name`, else the host
    /// name), or why there is none: fleet clients are then skipped. Fixed
    /// for the daemon's life: a new name changes every fleet client's
    /// sequences at once, so it is a restart, like the interfaces.
    pub server_name: Result<knock_common::server_id::ServerId, String>,
}

/// How long a TCP flow still passes after the client's FIN or RST: enough for
/// the closing handshake, short enough that the flow cannot be reused.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Failed knocks by default: a source prefix (an IPv4 address, an IPv6 /64)
/// may make a burst of 32, then one a minute. A wrong knock of four ports
/// is four misses, and `knock --check` tries up to three slots: a user may
/// get a PIN wrong twice and still get in at the third attempt. A wrong
/// guess costs three or four misses, so after its burst one address gets a
/// guess every three or four minutes: an online search of a million
/// candidates takes it about six years.
pub const FAILED_KNOCKS: FailedKnocks =
    FailedKnocks { burst: 32, interval: Duration::from_secs(60) };
/// All sources together: beyond this rate (and burst), a failed knock costs
/// its prefix the whole burst at once.
pub const GLOBAL_MISS_RATE_PER_SEC: u64 = 100;
pub const GLOBAL_MISS_BURST: u64 = 1000;

/// How far an SPA datagram's clock may be from ours, by default.
pub const SPA_SKEW: Duration = Duration::from_secs(30);

/// The program's settings for these options.
pub(crate) fn settings(options: &AttachOptions) -> Settings {
    let limit = options.failed_knocks;
    let rate = knock_common::limit::Rate::new(limit.interval.as_nanos() as u64, limit.burst);
    let global =
        knock_common::limit::Rate::new(1_000_000_000 / GLOBAL_MISS_RATE_PER_SEC, GLOBAL_MISS_BURST);
    Settings {
        open_window_ns: options.open_window.as_nanos() as u64,
        knock_timeout_ns: options.knock_timeout.as_nanos() as u64,
        idle_timeout_ns: options.idle_timeout.as_nanos() as u64,
        close_grace_ns: CLOSE_GRACE.as_nanos() as u64,
        miss_interval_ns: rate.interval_ns,
        miss_burst_ns: rate.burst_ns,
        global_miss_interval_ns: global.interval_ns,
        global_miss_burst_ns: global.burst_ns,
        spa_skew_secs: options.spa_skew.as_secs(),
    }
}
