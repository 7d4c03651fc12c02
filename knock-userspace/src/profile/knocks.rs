//! What a profile knocks: unlocking its key and deriving its sequences.

use anyhow::{Result, anyhow, bail};
use knock_common::{
    secret,
    sequence::{self, Params},
    server_id::ServerId,
};

use super::{Key, Knock, Profile, UnlockMode};
use crate::ports::ProtoPort;

impl Profile {
    /// The slot `unix_secs` falls in (`None` for static sequences).
    pub fn slot_at(&self, unix_secs: u64) -> Option<u64> {
        match &self.knock {
            Knock::Rotating { slot_secs, .. } => Some(sequence::slot_at(unix_secs, *slot_secs)),
            Knock::Static { .. } | Knock::Spa { .. } => None,
        }
    }

    /// Does this profile derive a different sequence for every server?
    pub fn is_fleet(&self) -> bool {
        matches!(self.knock, Knock::Rotating { fleet: true, .. })
    }

    /// The knocks of time slot `slot` (ignored for static sequences) at the
    /// server `server`, which only a fleet profile needs (and requires).
    pub fn sequence_for_slot(
        &self,
        slot: u64,
        server: Option<&ServerId>,
    ) -> Result<Vec<ProtoPort>> {
        let (key, proto, length, ports, exclude, fleet) = match &self.knock {
            Knock::Rotating { key, proto, length, ports, exclude, fleet, .. } => {
                (key, proto, length, ports, exclude, *fleet)
            }
            Knock::Static { steps } => return Ok(steps.clone()),
            Knock::Spa { .. } => {
                bail!("an SPA profile sends one datagram, not a sequence: use 'knock-xdp knock'")
            }
        };
        let secret = match key {
            Key::Random(secret) | Key::Passphrase { secret: Some(secret), .. } => *secret,
            Key::Passphrase { secret: None, .. } => {
                bail!(
                    "this profile needs its passphrase (--passphrase-file FILE, or type it when asked)"
                )
            }
            // The server knows every step's code; a client, the one it was given.
            Key::Totp { pin_key: Some(pin_key), totp_secret: Some(totp), .. } => {
                secret::totp_slot_secret(pin_key, secret::totp_code(totp, slot))
            }
            Key::Totp { pin_key: Some(pin_key), code: Some(code), .. } => {
                secret::totp_slot_secret(pin_key, *code)
            }
            Key::Totp { .. } => {
                bail!(
                    "this profile needs the authenticator's code (--code) and the PIN (--pin-file FILE, or type it when asked)"
                )
            }
        };
        let params = Params { length: *length, port_lo: ports.0, port_hi: ports.1, exclude };
        let seq = match (fleet, server) {
            (false, _) => sequence::derive(&secret, slot, &params),
            (true, Some(server)) => sequence::derive_v2(&secret, server.as_bytes(), slot, &params),
            (true, None) => bail!(
                "a fleet profile knocks a different sequence at every server: name the server"
            ),
        }
        .map_err(|e| anyhow!("{e}"))?;
        Ok(seq.as_slice().iter().map(|&port| ProtoPort { port, proto: *proto }).collect())
    }

    /// Unlocks a passphrase profile with its passphrase.
    pub fn unlock_passphrase(&mut self, passphrase: &[u8]) {
        if let Knock::Rotating { key: Key::Passphrase { salt, cost, secret }, .. }
        | Knock::Spa { key: Key::Passphrase { salt, cost, secret }, .. } = &mut self.knock
        {
            *secret = Some(secret::passphrase_secret(passphrase, salt, *cost));
        }
    }

    /// The SPA key of an SPA profile (unlocked, for a passphrase).
    pub fn spa_key(&self) -> Result<[u8; 32]> {
        match &self.knock {
            Knock::Spa { key: Key::Random(secret), .. }
            | Knock::Spa { key: Key::Passphrase { secret: Some(secret), .. }, .. } => {
                Ok(knock_common::spa::key_from_secret(secret))
            }
            Knock::Spa { .. } => bail!(
                "this profile needs its passphrase (--passphrase-file FILE, or type it when asked)"
            ),
            _ => bail!("not an SPA profile"),
        }
    }

    /// Unlocks an authenticator profile with the current code and the PIN.
    pub fn unlock_totp(&mut self, code: u32, pin: &[u8]) {
        if let Knock::Rotating {
            key: Key::Totp { salt, cost, pin_key, code: slot_code, .. }, ..
        } = &mut self.knock
        {
            *pin_key = Some(secret::pin_key(pin, salt, *cost));
            *slot_code = Some(code);
        }
    }

    /// What the profile needs before it can knock: nothing, a passphrase, or a code and PIN.
    pub fn needs(&self) -> Option<UnlockMode> {
        match &self.knock {
            Knock::Rotating { key: Key::Passphrase { secret: None, .. }, .. }
            | Knock::Spa { key: Key::Passphrase { secret: None, .. }, .. } => {
                Some(UnlockMode::Passphrase)
            }
            Knock::Rotating { key: Key::Totp { pin_key: None, .. }, .. } => Some(UnlockMode::Totp),
            _ => None,
        }
    }

    /// The knocks to send at UNIX time `unix_secs` (to `server`, for a fleet profile).
    pub fn sequence_at(&self, unix_secs: u64, server: Option<&ServerId>) -> Result<Vec<ProtoPort>> {
        self.sequence_for_slot(self.slot_at(unix_secs).unwrap_or(0), server)
    }
}
