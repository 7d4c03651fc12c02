//! Through the running daemon, or offline: a command that changes what the
//! daemon holds asks the daemon when one runs, and otherwise edits the
//! state directory itself, under the lock a starting daemon takes, so the
//! two never write at once.

use anyhow::{Context as _, Result, bail};
use serde::de::DeserializeOwned;

use crate::{
    control::{self, Request, Unreachable},
    state::{State, StateDir},
};

/// Sends `request` to the running daemon and returns its answer; `None`
/// when no daemon runs, for the caller to do the work offline.
pub(super) fn ask_daemon<T: DeserializeOwned>(
    state: &StateDir,
    request: &Request,
) -> Result<Option<T>> {
    match control::connect(state) {
        Ok(stream) => control::send(stream, request).map(Some),
        Err(Unreachable::NotRunning) => Ok(None),
        Err(Unreachable::Other(err)) => Err(err),
    }
}

/// Changes the persisted state while no daemon runs (holding its lock).
pub(super) fn edit_state(state: &StateDir, edit: impl FnOnce(&mut State)) -> Result<()> {
    let _lock = lock_state(state)?;
    let mut saved = state.load()?;
    edit(&mut saved);
    state.save(&saved).context("cannot persist the change")
}

/// The state directory's lock, for work done without a daemon; a daemon
/// that holds it is on its way up or down.
pub(super) fn lock_state(state: &StateDir) -> Result<std::fs::File> {
    if !state.path().exists() {
        state.create()?;
    }
    match state.try_lock()? {
        Some(lock) => Ok(lock),
        None => bail!("the knock-xdp daemon is starting or stopping; try again"),
    }
}
