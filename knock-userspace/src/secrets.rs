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
