//! Used-sequence records across a restart that detaches. A take-over keeps
//! them in the pinned `USED` map; new maps start empty and install slots
//! s-1 to s+2, so a knock recorded in the minute before the restart would
//! open the door again. Whoever removes the maps (the daemon as it stops,
//! or `detach` after a daemon that died) writes the records to the state
//! directory, and the next daemon reads them into its new maps before it
//! attaches; its first rotation prunes those whose slot is gone.

use std::{
    fs,
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

/// Writes every record of the `USED` map pinned in `pin_dir`, if any.
pub fn save_pinned(state_dir: &StateDir, pin_dir: &Path) -> Result<()> {
    let pin = pin_dir.join(MAP_USED);
    if !pin.exists() {
        return Ok(());
    }
    let data = MapData::from_pin(&pin).with_context(|| format!("cannot open {}", pin.display()))?;
    let used: HashMap<MapData, UsedKey, u64> = HashMap::try_from(Map::HashMap(data))?;
    let keys: Vec<UsedKey> = used.keys().collect::<Result<_, _>>().context("cannot read USED")?;
    write(state_dir, keys.into_iter())
}

fn write(state_dir: &StateDir, keys: impl Iterator<Item = UsedKey>) -> Result<()> {
    let used = keys.map(|key| (key.client, key.slot)).collect();
    let text = toml::to_string(&UsedFile { used }).context("cannot serialise used sequences")?;
    let text = format!("# knock-xdp: sequences that opened the door, for the next start.\n{text}");
    write_atomically(&path(state_dir), text.as_bytes())
}

/// Reads the records of the last stop into new maps; how many.
pub fn restore(state_dir: &StateDir, maps: &mut KernelMaps) -> Result<usize> {
    let path = path(state_dir);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    let file: UsedFile = parse_toml(&text, &path)?;
    for &(client, slot) in &file.used {
        maps.mark_used(&UsedKey { client, _pad: 0, slot })?;
    }
    Ok(file.used.len())
}
