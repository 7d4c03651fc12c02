//! The single-line form of a client profile:
//! `knock-xdp:profile?v=1&name=alice&...`, the fields of the client's file.

use std::fmt::{Display, Write as _};

use anyhow::{Context as _, Result, anyhow, bail};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use super::{PROFILE_VERSION, Profile, ProfileFile, parse_port_list};

/// The URI form of a profile starts with this.
pub const URI_PREFIX: &str = "knock-xdp:profile?";

/// What a query value carries unescaped: what is plainly safe in a URI, and
/// `,` and `:` of port lists and static sequences, which keep them readable.
const ESCAPED: &AsciiSet =
    &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b',').remove(b':');

impl Profile {
    /// The client's profile as one line: `knock-xdp:profile?v=1&name=...`.
    pub fn to_uri(&self) -> Result<String> {
        let ProfileFile {
            version: _,
            name,
            id,
            index,
            proto,
            length,
            slot,
            ports,
            exclude,
            static_sequence,
            mode,
            spa,
            name_address,
            fleet,
            salt,
            cost,
            secret,
            totp_secret,
        } = self.to_client_file();
        let exclude = exclude
            .map(|ports| ports.iter().map(ToString::to_string).collect::<Vec<_>>().join(","));
        let mut uri = format!("{URI_PREFIX}v={PROFILE_VERSION}");
        // In alphabetical order, as the URIs already handed out have them.
        push(&mut uri, "cost", cost);
        push(&mut uri, "exclude", exclude);
        push(&mut uri, "fleet", fleet);
        push(&mut uri, "id", id);
        push(&mut uri, "index", index);
        push(&mut uri, "length", length);
        push(&mut uri, "mode", mode);
        push(&mut uri, "name", Some(name));
        push(&mut uri, "name_address", name_address);
        push(&mut uri, "ports", ports);
        push(&mut uri, "proto", proto);
        push(&mut uri, "salt", salt);
        push(&mut uri, "secret", secret);
        push(&mut uri, "slot", slot);
        push(&mut uri, "spa", spa);
        push(&mut uri, "static", static_sequence);
        push(&mut uri, "totp_secret", totp_secret);
        Ok(uri)
    }

    /// Parses the URI form.
    pub fn from_uri(uri: &str) -> Result<Self> {
        let query = uri
            .trim()
            .strip_prefix(URI_PREFIX)
            .with_context(|| format!("a profile URI starts with '{URI_PREFIX}'"))?;
        let mut file = ProfileFile::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .with_context(|| format!("profile URI: '{pair}' is not key=value"))?;
            let value = percent_decode(value)?;
            match key {
                "v" => file.version = number("v", &value)?,
                "name" => file.name = value,
                "proto" => {
                    file.proto =
                        Some(value.parse().map_err(|e: String| anyhow!("profile URI: {e}"))?)
                }
                "length" => file.length = Some(number("length", &value)?),
                "slot" => file.slot = Some(value),
                "ports" => file.ports = Some(value),
                "exclude" => {
                    file.exclude =
                        Some(parse_port_list(&value).map_err(|e| anyhow!("profile URI: {e}"))?)
                }
                "static" => file.static_sequence = Some(value),
                "spa" => file.spa = Some(flag("spa", &value)?),
                "index" => file.index = Some(number("index", &value)?),
                "name_address" => file.name_address = Some(flag("name_address", &value)?),
                "fleet" => file.fleet = Some(flag("fleet", &value)?),
                "mode" => {
                    file.mode = Some(
                        value
                            .parse()
                            .map_err(|e: String| anyhow!(e).context("invalid profile URI"))?,
                    )
                }
                "salt" => file.salt = Some(value),
                "cost" => file.cost = Some(number("cost", &value)?),
                "secret" => file.secret = Some(value),
                other => bail!("profile URI: unknown field '{other}'"),
            }
        }
        Profile::from_file(&file).context("invalid profile URI")
    }
}

/// Appends `&key=value` when there is a value.
fn push(uri: &mut String, key: &str, value: Option<impl Display>) {
    if let Some(value) = value {
        let value = value.to_string();
        write!(uri, "&{key}={}", utf8_percent_encode(&value, ESCAPED)).expect("writes to a String");
    }
}

fn flag(what: &str, value: &str) -> Result<bool> {
    value.parse().map_err(|_| anyhow!("profile URI: {what} '{value}' is not true or false"))
}

fn number<T: std::str::FromStr>(what: &str, value: &str) -> Result<T> {
    value.parse().map_err(|_| anyhow!("profile URI: {what} '{value}' is not a number"))
}

/// Decodes a query value. The crate passes a malformed `%`-escape through as
/// text; a profile URI refuses it.
fn percent_decode(text: &str) -> Result<String> {
    let mut rest = text;
    while let Some(at) = rest.find('%') {
        let escape = rest.as_bytes().get(at + 1..at + 3);
        if !escape.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
            bail!("profile URI: bad %-escape");
        }
        rest = &rest[at + 3..];
    }
    let text =
        percent_decode_str(text).decode_utf8().map_err(|_| anyhow!("profile URI: not UTF-8"))?;
    Ok(text.into_owned())
}
