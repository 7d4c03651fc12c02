//! QR codes in the terminal, so a phone can scan a profile or an
//! authenticator URI straight off the screen.

use anyhow::{Result, anyhow};
use qrcode::{EcLevel, QrCode, render::unicode::Dense1x2};

/// Renders `text` two modules per character cell, for the usual light text
/// on a dark background: light modules (and the quiet zone) are drawn with
/// block characters, dark modules are left blank.
pub fn render(text: &str) -> Result<String> {
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::L)
        .map_err(|err| anyhow!("cannot make a QR code: {err}"))?;
    let mut out = code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build();
    out.push('\n');
    Ok(out)
}
