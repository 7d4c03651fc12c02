//! What a test reads back from an instance: the daemon's reports (`status`,
//! `list`, `log`), the maps it pinned, the files of its state directory,
//! and whether its program is still loaded.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use aya::{
    Pod,
    maps::{Array, HashMap, Map, MapData},
};

use super::Instance;

impl Instance {
    /// `status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).expect("status is JSON")
    }

    /// `list --json`, parsed.
    pub fn list(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["list", "--json"])).expect("list is JSON")
    }

    /// The program's counter `name`, as `status` shows it.
    pub fn counter(&self, name: &str) -> u64 {
        self.status()["counters"][name].as_u64().unwrap_or_else(|| panic!("no counter {name}"))
    }

    /// The daemon's process id, as `status` shows it.
    pub fn pid(&self) -> i32 {
        self.status()["pid"].as_i64().expect("status has the pid") as i32
    }

    /// `log --json ARGS`: one record a line, parsed.
    pub fn log_records(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let mut all = vec!["log", "--json"];
        all.extend_from_slice(args);
        let out = self.ok(&all);
        out.lines().map(|l| serde_json::from_str(l).expect("a JSON record")).collect()
    }

    /// Where this instance pins (valid for `Entry::NsenterNet`).
    pub fn pin_dir(&self) -> PathBuf {
        let state = knock_userspace::state::StateDir::new(self.state_path());
        knock_userspace::loader::pin_dir(&state).unwrap()
    }

    /// The pinned hash map `name` (valid for `Entry::NsenterNet`).
    pub fn pinned_hash_map<K: Pod, V: Pod>(&self, name: &str) -> HashMap<MapData, K, V> {
        let data = MapData::from_pin(self.pin_dir().join(name)).unwrap();
        HashMap::try_from(Map::HashMap(data)).unwrap()
    }

    /// The pinned array `name` (valid for `Entry::NsenterNet`).
    pub fn pinned_array<V: Pod>(&self, name: &str) -> Array<MapData, V> {
        let data = MapData::from_pin(self.pin_dir().join(name)).unwrap();
        Array::try_from(Map::Array(data)).unwrap()
    }

    /// Every regular file under the state directory with its bytes, but
    /// those named in `skip`: what a refused change must leave alone.
    pub fn state_files(&self, skip: &[&str]) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut files = BTreeMap::new();
        let mut pending = vec![self.state_path().to_owned()];
        while let Some(dir) = pending.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                let kind = entry.file_type().unwrap();
                if kind.is_dir() {
                    pending.push(entry.path());
                } else if kind.is_file() && !skip.iter().any(|s| entry.file_name() == *s) {
                    files.insert(entry.path(), fs::read(entry.path()).unwrap());
                }
            }
        }
        files
    }

    pub fn state_path(&self) -> &Path {
        &self.state_dir
    }
}

/// Is a BPF program with this id still loaded anywhere?
pub fn program_loaded(id: u32) -> bool {
    aya::programs::loaded_programs().any(|p| p.is_ok_and(|p| p.id() == id))
}
