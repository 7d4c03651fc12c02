//! Removing allow entries whose deadline has passed.

use tracing::{info, warn};

use super::Daemon;
use crate::clock;

impl Daemon {
    pub(super) fn sweep(&mut self) {
        match self.tables.sweep(clock::boot_ns()) {
            Ok(expired) => {
                for key in expired {
                    if let Some(addr) = key.ip() {
                        info!(source = %addr, "allow window ended");
                    }
                }
            }
            Err(err) => warn!("sweep: {err:#}"),
        }
    }
}
