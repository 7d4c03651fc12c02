//! Building datagrams: the client's side of SPA.

use core::net::IpAddr;

use super::{
    DATAGRAM_LEN, MAC_LEN, NONCE_LEN, SIGNED_LEN, Scratch, SpaKey, VERSION, flags, mac_into,
};
use crate::{sha256, source::SourceKey};

/// The label that makes a client's SPA key from its secret, so the key
/// that opens by SPA is never the one that derives knock sequences.
pub const KEY_LABEL: &[u8] = b"knock-xdp spa v1 key";

/// A client's SPA key: HMAC-SHA256(secret, [`KEY_LABEL`]).
pub fn key_from_secret(secret: &[u8; 32]) -> [u8; 32] {
    let (inner, outer) = sha256::hmac_midstates(secret);
    sha256::hmac_short(&inner, &outer, KEY_LABEL)
}

/// What one datagram asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// The client's index on the server (from its profile).
    pub index: u16,
    pub unix_secs: u32,
    pub nonce: [u8; NONCE_LEN],
    /// The address to admit instead of the datagram's source.
    pub admit: Option<IpAddr>,
}

/// The datagram for `request`, sent to `server` with `key`.
pub fn datagram(key: &[u8; 32], request: &Request, server: IpAddr) -> [u8; DATAGRAM_LEN] {
    let mut out = [0u8; DATAGRAM_LEN];
    out[0] = VERSION;
    out[2..4].copy_from_slice(&request.index.to_be_bytes());
    out[4..8].copy_from_slice(&request.unix_secs.to_be_bytes());
    out[8..8 + NONCE_LEN].copy_from_slice(&request.nonce);
    match request.admit {
        None => {}
        Some(IpAddr::V4(v4)) => {
            out[1] = flags::ADMIT;
            out[20..24].copy_from_slice(&v4.octets());
        }
        Some(IpAddr::V6(v6)) => {
            out[1] = flags::ADMIT | flags::ADMIT_V6;
            out[20..36].copy_from_slice(&v6.octets());
        }
    }
    let mut scratch = Scratch {
        datagram: out,
        server: SourceKey::from(server),
        block: [0; 16],
        state: [0; 8],
        work: [0; 8],
    };
    mac_into(&spa_key(key, 0, 0), &mut scratch);
    for (i, word) in scratch.state[..MAC_LEN / 4].iter().enumerate() {
        out[SIGNED_LEN + 4 * i..SIGNED_LEN + 4 * i + 4].copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// The program's form of `key`: HMAC's midstates, with the client's id and policy.
pub fn spa_key(key: &[u8; 32], client: u32, policy: u32) -> SpaKey {
    let (inner, outer) = sha256::hmac_midstates(key);
    SpaKey { inner, outer, client, policy }
}
