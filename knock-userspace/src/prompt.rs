//! Reading a passphrase or PIN: from a file (first line), or typed at the
//! terminal without echo. Never from the command line, where it would land
//! in shell history and `ps`.

use std::{io::IsTerminal as _, path::Path};

use anyhow::{Context as _, Result, bail};

/// Reads a secret for `what`; `confirm` asks twice when typed.
pub fn read_secret(file: Option<&Path>, what: &str, confirm: bool) -> Result<Vec<u8>> {
    let text = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            text.lines().next().unwrap_or("").to_owned()
        }
        None => {
            if !std::io::stdin().is_terminal() {
                bail!("no terminal to ask for the {what}: give it in a file (see --help)");
            }
            let first = rpassword::prompt_password(format!("{what}: "))
                .context("cannot read from the terminal")?;
            if confirm {
                let again = rpassword::prompt_password(format!("{what} again: "))
                    .context("cannot read from the terminal")?;
                if again != first {
                    bail!("the two entries differ");
                }
            }
            first
        }
    };
    if text.is_empty() {
        bail!("the {what} is empty");
    }
    Ok(text.into_bytes())
}

/// PBKDF2-HMAC-SHA256 iterations one GPU computes a second: hashcat mode
/// 10900 on an NVIDIA RTX 5090 runs 11,157.2 kH/s at 999 iterations
/// (hashcat v6.2.6-851 benchmark), about 1.1 × 10^10 iterations a second.
/// A guess at cost `c` costs `c` of them (docs/secrets-v1.md, section 7.3).
pub const GPU_PBKDF2_ITERATIONS_PER_SEC: f64 = 11_157_200.0 * 999.0;

/// An authenticator PIN must hold out this long against one such GPU.
pub const MIN_PIN_SEARCH_YEARS: f64 = 10.0;

const SECONDS_PER_YEAR: f64 = 365.25 * 24.0 * 3600.0;

/// How many PINs of this one's length and character classes there are:
/// the size of its alphabet (10 digits, 26 lowercase, 26 uppercase, 33
/// other printable ASCII characters and space, and 100 for anything beyond
/// ASCII, for each class it uses) to the power of its length in characters.
/// It is what a search that knows the PIN's shape must cover; a PIN of
/// dictionary words holds out for less than this suggests.
pub fn pin_search_space(pin: &[u8]) -> f64 {
    let text = String::from_utf8_lossy(pin);
    let mut classes = [false; 5];
    for c in text.chars() {
        let class = match c {
            '0'..='9' => 0,
            'a'..='z' => 1,
            'A'..='Z' => 2,
            c if c.is_ascii() => 3,
            _ => 4,
        };
        classes[class] = true;
    }
    let alphabet: u32 =
        [10, 26, 26, 33, 100].iter().zip(classes).filter(|(_, used)| *used).map(|(n, _)| n).sum();
    f64::from(alphabet).powi(text.chars().count() as i32)
}

/// Refuses an authenticator PIN that one GPU exhausts in less than
/// [`MIN_PIN_SEARCH_YEARS`] at PBKDF2 cost `cost`: whoever recorded one
/// knock and reads the code of its step (over a shoulder, from a stolen
/// phone) pays one PBKDF2 per PIN guess, offline.
pub fn check_pin_strength(pin: &[u8], cost: u32) -> Result<()> {
    let space = pin_search_space(pin);
    let guesses_per_sec = GPU_PBKDF2_ITERATIONS_PER_SEC / f64::from(cost);
    let seconds = space / guesses_per_sec;
    if seconds >= MIN_PIN_SEARCH_YEARS * SECONDS_PER_YEAR {
        return Ok(());
    }
    // What does hold out at this cost: so many digits, or lowercase letters.
    let needed = MIN_PIN_SEARCH_YEARS * SECONDS_PER_YEAR * guesses_per_sec;
    let digits = needed.log10().ceil();
    let letters = (needed.ln() / 26f64.ln()).ceil();
    bail!(
        "this PIN ({space:.1e} possible PINs of its length and kinds of character) falls to an \
         offline search in {} on one GPU: a recorded knock and the code of its step let anyone \
         try {guesses_per_sec:.0} PINs a second at cost {cost} (hashcat's PBKDF2-HMAC-SHA256 \
         speed on an RTX 5090); use one that takes at least {MIN_PIN_SEARCH_YEARS} years, such \
         as {digits} digits or {letters} lowercase letters",
        human_time(seconds)
    )
}

/// `seconds` as a rough human duration: "40 seconds", "3 hours", "2.5 years".
fn human_time(seconds: f64) -> String {
    let units = [
        (SECONDS_PER_YEAR, "years"),
        (86_400.0, "days"),
        (3_600.0, "hours"),
        (60.0, "minutes"),
        (1.0, "seconds"),
    ];
    let (size, name) = units.iter().find(|(size, _)| seconds >= *size).unwrap_or(&units[4]);
    let value = seconds / size;
    if value < 10.0 { format!("{value:.1} {name}") } else { format!("{value:.0} {name}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_search_space_follows_character_classes_and_length() {
        assert_eq!(pin_search_space(b"482913"), 1e6);
        assert_eq!(pin_search_space(b"abc"), 26f64.powi(3));
        assert_eq!(pin_search_space(b"aB3"), 62f64.powi(3));
        assert_eq!(pin_search_space(b"a-b c"), 59f64.powi(5));
        assert_eq!(pin_search_space("é1".as_bytes()), 110f64.powi(2));
    }

    #[test]
    fn weak_pins_are_refused_at_the_pbkdf2_cost() {
        // At the default cost one GPU tries about 18,600 PINs a second.
        let err = check_pin_strength(b"482913", 600_000).unwrap_err().to_string();
        assert!(err.contains("offline search in 54 seconds"), "{err}");
        assert!(err.contains("13 digits or 10 lowercase letters"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        assert!(check_pin_strength(b"123456789012", 600_000).is_err(), "12 digits: 1.7 years");
        check_pin_strength(b"1234567890123", 600_000).unwrap();
        check_pin_strength(b"correct horse battery", 600_000).unwrap();
        // A lower cost asks for more.
        assert!(check_pin_strength(b"1234567890123", 10_000).is_err());
        check_pin_strength(b"123456789012345", 10_000).unwrap();
    }
}
