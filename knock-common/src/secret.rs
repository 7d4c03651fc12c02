//! Client secrets without a stored random secret, spec version 1
//! (`docs/secrets-v1.md`).
//!
//! A rotating knock sequence is derived from a 32-byte secret
//! ([`crate::sequence::derive`]). Besides a random secret, a client can obtain
//! it in two ways that leave nothing secret on its disk:
//!
//! * **Passphrase mode**: the secret is [`passphrase_secret`], PBKDF2 over the
//!   passphrase and a per-client salt. The server keeps the derived secret.
//! * **Authenticator (TOTP) mode**: an authenticator app holds a TOTP secret
//!   and shows a 6-digit code per 30-second step ([`totp_code`]); the client
//!   also knows a PIN, which gives the [`pin_key`]. The secret of slot `s`
//!   (slots are TOTP steps) is [`totp_slot_secret`] of the PIN key and the
//!   code of step `s`. The server keeps the TOTP secret and the PIN key.
//!
//! Everything here is `no_std` and allocation-free; it is part of the
//! userspace-only feature `sequence`.

use data_encoding::{BASE32_NOPAD, BASE32_NOPAD_NOCASE};
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::Sha256;

/// Spec version implemented here; it is also the `v1` in the domain strings.
pub const SECRETS_SPEC_VERSION: u32 = 1;

/// Default PBKDF2 iteration count for passphrases: 600 000, the count
/// commonly recommended today for PBKDF2-HMAC-SHA256 (OWASP, 2023). It costs
/// a fraction of a second once per unlock on the client and nothing on the
/// server, which stores the derived secret; an attacker who observed a knock
/// pays it for every passphrase guess.
pub const DEFAULT_PASSPHRASE_COST: u32 = 600_000;

/// Default PBKDF2 iteration count for PINs: as high as for passphrases,
/// because a PIN has even less entropy and needs all the slowing down it can
/// get. The client pays it once per unlock (the PIN key then serves every
/// code); the server stores the PIN key and never pays it.
pub const DEFAULT_PIN_COST: u32 = 600_000;

/// Lowest iteration count a profile may have; callers refuse profiles with
/// less. The functions here accept any count from 1 up.
pub const MIN_COST: u32 = 10_000;

/// Length of the per-client random salt, in bytes.
pub const SALT_LEN: usize = 16;

/// TOTP time step, in seconds. The slot of a TOTP client is its TOTP step.
pub const TOTP_STEP_SECS: u32 = 30;

/// Length of a generated TOTP secret: 160 bits, as RFC 4226 recommends.
pub const TOTP_SECRET_LEN: usize = 20;

/// Number of decimal digits of a TOTP code.
pub const TOTP_DIGITS: u32 = 6;

/// Number of distinct TOTP codes, 10^[`TOTP_DIGITS`].
pub const TOTP_CODES: u32 = 1_000_000;

/// ASCII prefix of the PBKDF2 salt in passphrase mode.
pub const PASSPHRASE_SALT_PREFIX: &[u8] = b"knock-xdp passphrase v1";

/// ASCII prefix of the PBKDF2 salt of the PIN key in TOTP mode.
pub const PIN_SALT_PREFIX: &[u8] = b"knock-xdp totp pin v1";

/// ASCII prefix of the HMAC message that turns a PIN key and a code into the
/// secret of a slot.
pub const TOTP_TAG: &[u8] = b"knock-xdp totp v1";

type HmacSha256 = Hmac<Sha256>;
type HmacSha1 = Hmac<Sha1>;

/// PBKDF2-HMAC-SHA256 (RFC 8018, section 5.2) with a 32-byte output, that
/// is the first block `T_1` only.
///
/// # Panics
///
/// If `iterations` is 0 (RFC 8018 requires a positive count).
pub fn pbkdf2_sha256(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    assert!(iterations != 0, "PBKDF2 needs at least one iteration");
    pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password, salt, iterations)
}

/// PBKDF2 with the salt `prefix || salt`.
fn salted_pbkdf2(password: &[u8], prefix: &[u8], salt: &[u8; SALT_LEN], cost: u32) -> [u8; 32] {
    // Both prefixes are at most 23 bytes.
    let mut full = [0u8; 32 + SALT_LEN];
    let len = prefix.len() + SALT_LEN;
    full[..prefix.len()].copy_from_slice(prefix);
    full[prefix.len()..len].copy_from_slice(salt);
    pbkdf2_sha256(password, &full[..len], cost)
}

/// Passphrase mode: the client secret is
/// `PBKDF2-HMAC-SHA256(passphrase, "knock-xdp passphrase v1" || salt, cost)`.
///
/// `passphrase` is taken byte for byte (UTF-8 as typed, not normalised);
/// callers strip one trailing `"\n"` when reading it from a file or terminal.
///
/// # Panics
///
/// If `cost` is 0.
pub fn passphrase_secret(passphrase: &[u8], salt: &[u8; SALT_LEN], cost: u32) -> [u8; 32] {
    salted_pbkdf2(passphrase, PASSPHRASE_SALT_PREFIX, salt, cost)
}

/// TOTP mode, part 1: the PIN key is
/// `PBKDF2-HMAC-SHA256(pin, "knock-xdp totp pin v1" || salt, cost)`.
///
/// `pin` is taken byte for byte, like a passphrase.
///
/// # Panics
///
/// If `cost` is 0.
pub fn pin_key(pin: &[u8], salt: &[u8; SALT_LEN], cost: u32) -> [u8; 32] {
    salted_pbkdf2(pin, PIN_SALT_PREFIX, salt, cost)
}

/// TOTP mode, part 2: the secret of the slot whose TOTP code is `code`,
/// `HMAC-SHA256(key = pin_key, message = "knock-xdp totp v1" || DDDDDD)` where
/// `DDDDDD` is `code` as 6 ASCII decimal digits, zero-padded.
///
/// # Panics
///
/// If `code` has more than 6 digits (`code >= 1_000_000`).
pub fn totp_slot_secret(pin_key: &[u8; 32], code: u32) -> [u8; 32] {
    assert!(code < TOTP_CODES, "a TOTP code has {TOTP_DIGITS} digits");
    let mut digits = [b'0'; TOTP_DIGITS as usize];
    let mut rest = code;
    for d in digits.iter_mut().rev() {
        // rest % 10 < 10, so this is an ASCII digit.
        *d = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    let mut mac = HmacSha256::new_from_slice(pin_key).expect("HMAC takes any key length");
    mac.update(TOTP_TAG);
    mac.update(&digits);
    mac.finalize().into_bytes().into()
}

/// The TOTP code of step `step` (`floor(unix / 30)`): RFC 6238 TOTP with
/// HMAC-SHA1 and 6 digits, which is RFC 4226 HOTP with counter `step`:
/// dynamic truncation of `HMAC-SHA1(totp_secret, step as 8 big-endian
/// bytes)`, modulo 10^6. The result is below 1 000 000; shown with leading
/// zeros, it is what an authenticator app displays.
pub fn totp_code(totp_secret: &[u8], step: u64) -> u32 {
    // The truncation is four lines over the hmac crate; a TOTP crate would
    // bring more than it takes away.
    let mut mac = HmacSha1::new_from_slice(totp_secret).expect("HMAC takes any key length");
    mac.update(&step.to_be_bytes());
    let h: [u8; 20] = mac.finalize().into_bytes().into();
    let offset = usize::from(h[19] & 0x0f);
    let bin =
        u32::from_be_bytes([h[offset], h[offset + 1], h[offset + 2], h[offset + 3]]) & 0x7fff_ffff;
    bin % TOTP_CODES
}

/// Length of the base32 text of `n` bytes without padding: `ceil(8n / 5)`.
pub const fn base32_len(n: usize) -> usize {
    n / 5 * 8 + (n % 5 * 8).div_ceil(5)
}

/// Encodes `data` as RFC 4648 base32, upper case, without `=` padding (as
/// otpauth URIs carry it), into the start of `out`, and returns that text.
///
/// # Panics
///
/// If `out` is shorter than [`base32_len`]`(data.len())`.
pub fn base32_encode<'a>(data: &[u8], out: &'a mut [u8]) -> &'a str {
    let len = base32_len(data.len());
    assert!(out.len() >= len, "base32 of {} bytes needs {len} bytes of output", data.len());
    BASE32_NOPAD.encode_mut_str(data, &mut out[..len])
}

/// Decodes RFC 4648 base32 text into the start of `out` and returns the
/// number of bytes written.
///
/// Upper and lower case letters are accepted; `=` and spaces are ignored
/// wherever they are (so padded text and text in groups, as some apps show
/// it, decode too). Returns `None` for any other character, for a number of
/// symbols that no byte string encodes to (1, 3 or 6 modulo 8), for non-zero
/// unused bits in the last symbol (so every byte string has exactly one
/// accepted spelling up to case, padding and spaces), or when `out` is too
/// short. The decoded length is at most `text.len() * 5 / 8`.
pub fn base32_decode(text: &str, out: &mut [u8]) -> Option<usize> {
    // The crate's codec has no characters to skip anywhere, so it gets the
    // symbols 8 at a time: 8 symbols are 5 whole bytes, and only the last,
    // shorter group has a length or unused bits to check.
    let mut symbols = text.bytes().filter(|c| !matches!(c, b'=' | b' '));
    let mut group = [0u8; 8];
    let mut pos = 0;
    loop {
        let mut n = 0;
        for (slot, symbol) in group.iter_mut().zip(&mut symbols) {
            *slot = symbol;
            n += 1;
        }
        if n == 0 {
            return Some(pos);
        }
        let len = BASE32_NOPAD_NOCASE.decode_len(n).ok()?;
        BASE32_NOPAD_NOCASE.decode_mut(&group[..n], out.get_mut(pos..pos + len)?).ok()?;
        pos += len;
        if n < group.len() {
            return Some(pos);
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::String;
    use std::vec;
    use std::vec::Vec;

    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| std::format!("{b:02x}")).collect()
    }

    #[test]
    fn domain_strings() {
        assert_eq!(PASSPHRASE_SALT_PREFIX.len(), 23);
        assert_eq!(PIN_SALT_PREFIX.len(), 21);
        assert_eq!(TOTP_TAG.len(), 17);
        assert_eq!(TOTP_CODES, 10u32.pow(TOTP_DIGITS));
        assert_eq!(SECRETS_SPEC_VERSION, 1);
        for tag in [PASSPHRASE_SALT_PREFIX, PIN_SALT_PREFIX, TOTP_TAG] {
            assert!(tag.ends_with(b" v1"));
        }
    }

    /// Published PBKDF2-HMAC-SHA256 outputs (first 32 bytes where the
    /// published output is longer).
    #[test]
    fn pbkdf2_published_vectors() {
        let cases: &[(&[u8], &[u8], u32, &str)] = &[
            (
                b"password",
                b"salt",
                1,
                "120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b",
            ),
            (
                b"password",
                b"salt",
                2,
                "ae4d0c95af6b46d32d0adff928f06dd02a303f8ef3c251dfd6e2d85a95474c43",
            ),
            (
                b"password",
                b"salt",
                4096,
                "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a",
            ),
            (
                b"passwordPASSWORDpassword",
                b"saltSALTsaltSALTsaltSALTsaltSALTsalt",
                4096,
                "348c89dbcbd32b2f32d814b8116e84cf2b17347ebc1800181c4e2a1fb8dd53e1",
            ),
            // RFC 7914, section 11.
            (
                b"passwd",
                b"salt",
                1,
                "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc",
            ),
        ];
        for &(password, salt, iterations, expected) in cases {
            assert_eq!(hex(&pbkdf2_sha256(password, salt, iterations)), expected);
        }
    }

    #[test]
    #[should_panic]
    fn pbkdf2_zero_iterations_panics() {
        pbkdf2_sha256(b"p", b"s", 0);
    }

    #[test]
    fn salts_are_prefixed_and_modes_separated() {
        let salt = [7u8; SALT_LEN];
        let mut full = Vec::from(PASSPHRASE_SALT_PREFIX);
        full.extend_from_slice(&salt);
        assert_eq!(passphrase_secret(b"hunter2", &salt, 3), pbkdf2_sha256(b"hunter2", &full, 3));
        let mut full = Vec::from(PIN_SALT_PREFIX);
        full.extend_from_slice(&salt);
        assert_eq!(pin_key(b"1234", &salt, 3), pbkdf2_sha256(b"1234", &full, 3));
        assert_ne!(pin_key(b"x", &salt, 3), passphrase_secret(b"x", &salt, 3));
        assert_ne!(passphrase_secret(b"x", &salt, 3), passphrase_secret(b"x", &[8; SALT_LEN], 3));
        assert_ne!(passphrase_secret(b"x", &salt, 3), passphrase_secret(b"x", &salt, 4));
    }

    /// RFC 6238 appendix B, SHA-1 rows: the last 6 of the 8 digits.
    #[test]
    fn totp_rfc6238_vectors() {
        let secret = b"12345678901234567890";
        for (time, code8) in [
            (59u64, 94_287_082u32),
            (1_111_111_109, 7_081_804),
            (1_111_111_111, 14_050_471),
            (1_234_567_890, 89_005_924),
            (2_000_000_000, 69_279_037),
            (20_000_000_000, 65_353_130),
        ] {
            assert_eq!(
                totp_code(secret, time / u64::from(TOTP_STEP_SECS)),
                code8 % TOTP_CODES,
                "time {time}"
            );
        }
    }

    /// RFC 4226 appendix D: HOTP values for counters 0 to 9.
    #[test]
    fn hotp_rfc4226_vectors() {
        let expected = [
            755_224, 287_082, 359_152, 969_429, 338_314, 254_676, 287_922, 162_583, 399_871,
            520_489,
        ];
        for (counter, code) in expected.into_iter().enumerate() {
            assert_eq!(totp_code(b"12345678901234567890", counter as u64), code);
        }
    }

    #[test]
    fn slot_secret_uses_six_zero_padded_digits() {
        let key = [0x42u8; 32];
        let mut mac = HmacSha256::new_from_slice(&key).unwrap();
        mac.update(b"knock-xdp totp v1000042");
        let expected: [u8; 32] = mac.finalize().into_bytes().into();
        assert_eq!(totp_slot_secret(&key, 42), expected);
        assert_ne!(totp_slot_secret(&key, 0), totp_slot_secret(&key, 999_999));
        assert_ne!(totp_slot_secret(&key, 42), totp_slot_secret(&[0; 32], 42));
    }

    #[test]
    #[should_panic]
    fn seven_digit_code_panics() {
        totp_slot_secret(&[0; 32], 1_000_000);
    }

    /// RFC 4648 section 10, without the padding.
    #[test]
    fn base32_rfc4648_vectors() {
        for (data, text) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            let mut out = [0u8; 16];
            assert_eq!(base32_len(data.len()), text.len());
            assert_eq!(base32_encode(data.as_bytes(), &mut out), text);
            let n = base32_decode(text, &mut out).unwrap();
            assert_eq!(&out[..n], data.as_bytes());
        }
    }

    #[test]
    fn base32_round_trips() {
        let data: Vec<u8> = (0..=255u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
        for n in 0..40 {
            let mut text = vec![0u8; base32_len(n)];
            let encoded = String::from(base32_encode(&data[..n], &mut text));
            assert_eq!(encoded.len(), (8 * n).div_ceil(5));
            let mut out = vec![0u8; encoded.len() * 5 / 8];
            assert_eq!(base32_decode(&encoded, &mut out), Some(n));
            assert_eq!(&out[..n], &data[..n]);
            // Lower case, padding and spaces.
            let mut loose = encoded.to_lowercase();
            while loose.len() % 8 != 0 {
                loose.push('=');
            }
            let spaced: String = loose
                .chars()
                .enumerate()
                .flat_map(|(i, c)| (i % 4 == 0).then_some(' ').into_iter().chain([c]))
                .collect();
            let mut out = vec![0u8; spaced.len()];
            assert_eq!(base32_decode(&spaced, &mut out), Some(n), "{spaced:?}");
            assert_eq!(&out[..n], &data[..n]);
        }
    }

    #[test]
    fn base32_rejects_bad_text() {
        let mut out = [0u8; 32];
        for text in [
            "MZXW6YTBO1",  // '1' is not in the alphabet
            "MZXW6YTBOI!", // nor is '!'
            "M",           // 1 symbol encodes nothing
            "MZX",         // nor do 3
            "MZXW6Y",      // nor 6
            "MZ",          // "f" is MY: non-zero unused bits
            "MZXW6YR",     // "foob" is MZXW6YQ
        ] {
            assert_eq!(base32_decode(text, &mut out), None, "{text:?}");
        }
        // Too short an output.
        assert_eq!(base32_decode("MZXW6YTB", &mut out[..4]), None);
        assert_eq!(base32_decode("MZXW6YTB", &mut out[..5]), Some(5));
    }

    #[test]
    #[should_panic]
    fn base32_encode_short_output_panics() {
        let mut out = [0u8; 7];
        base32_encode(b"fooba", &mut out);
    }
}
