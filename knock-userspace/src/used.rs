//! Used-sequence records across a restart that detaches. A take-over keeps
//! them in the pinned `USED` map; new maps start empty and install slots
//! s-1 to s+2, so a knock recorded in the minute before the restart would
//! open the door again. Whoever removes the maps (the daemon as it stops,
//! or `detach` after a daemon that died) writes the records to the state
//! directory once the program is detached, and the next daemon reads those
//! of the slots it installed into its new maps before it attaches.

use std::{
    collections::BTreeSet,
    fs,
    io::Read as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, Map, MapData};
use knock_common::{maps::MAP_USED, trie::UsedKey};
use serde::{Deserialize, Serialize};

use crate::{
    maps::KernelMaps,
    state::{StateDir, parse_toml, write_atomically},
};

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsedFile {
    /// `[client id, slot]` of every sequence that opened the door.
    used: Vec<(u32, u64)>,
}

fn path(state_dir: &StateDir) -> PathBuf {
    state_dir.path().join("used.toml")
}

/// Writes every record in the maps.
pub fn save(state_dir: &StateDir, maps: &KernelMaps) -> Result<()> {
    write(state_dir, maps.used()?.into_iter().map(|(key, _)| key))
}

/// The `USED` map pinned in `pin_dir`, if any, held open so that its
/// records can be read after the pins (and the program) are gone.
pub fn open_pinned(pin_dir: &Path) -> Result<Option<HashMap<MapData, UsedKey, u64>>> {
    let pin = pin_dir.join(MAP_USED);
    if !pin.exists() {
        return Ok(None);
    }
    let data = MapData::from_pin(&pin).with_context(|| format!("cannot open {}", pin.display()))?;
    Ok(Some(HashMap::try_from(Map::HashMap(data))?))
}

/// Writes every record of a map [`open_pinned`] returned.
pub fn save_pinned(state_dir: &StateDir, used: &HashMap<MapData, UsedKey, u64>) -> Result<()> {
    let keys: Vec<UsedKey> = used.keys().collect::<Result<_, _>>().context("cannot read USED")?;
    write(state_dir, keys.into_iter())
}

fn write(state_dir: &StateDir, keys: impl Iterator<Item = UsedKey>) -> Result<()> {
    let used = keys.map(|key| (key.client, key.slot)).collect();
    let text = toml::to_string(&UsedFile { used }).context("cannot serialise used sequences")?;
    let text = format!("# knock-xdp: sequences that opened the door, for the next start.\n{text}");
    write_atomically(&path(state_dir), text.as_bytes())
}

/// The most the file is read of: far more than the records of 65,536
/// clients' four slots.
const MAX_BYTES: u64 = 16 << 20;

/// Reads the records of the last stop whose `(client, slot)` is `live`
/// into new maps; how many.
pub fn restore(
    state_dir: &StateDir,
    maps: &mut KernelMaps,
    live: &BTreeSet<(u32, u64)>,
) -> Result<usize> {
    let path = path(state_dir);
    let mut text = String::new();
    match fs::File::open(&path) {
        Ok(file) => file.take(MAX_BYTES + 1).read_to_string(&mut text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(err) => Err(err),
    }
    .with_context(|| format!("cannot read {}", path.display()))?;
    if text.len() as u64 > MAX_BYTES {
        anyhow::bail!("{} is larger than {MAX_BYTES} bytes", path.display());
    }
    let file: UsedFile = parse_toml(&text, &path)?;
    let mut restored = 0;
    for &(client, slot) in file.used.iter().filter(|record| live.contains(record)) {
        maps.mark_used(&UsedKey { client, _pad: 0, slot })?;
        restored += 1;
    }
    Ok(restored)
}
