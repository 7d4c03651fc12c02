//! The daemon's side of the admission filter ([`knock_common::filter`]):
//! the map, memory-mapped, so the daemon sets and clears single slots with
//! one-byte stores, as the program does, and never overwrites a slot the
//! program set a moment earlier.

use std::{
    os::fd::AsFd as _,
    sync::atomic::{AtomicU8, Ordering},
};

use anyhow::{Context as _, Result};
use aya::maps::MapData;
use knock_common::{
    filter::{self, SLOTS, WORD_BYTES, WORDS},
    source::SourceKey,
};
use memmap2::{MmapMut, MmapOptions};

pub struct AdmitFilter {
    mmap: MmapMut,
    // The map must outlive its mapping's users; the mapping keeps the map
    // alive in the kernel on its own.
    _map: MapData,
}

impl AdmitFilter {
    pub fn new(map: MapData) -> Result<Self> {
        let len = (WORDS * WORD_BYTES) as usize;
        let fd = map.fd().as_fd();
        // SAFETY: the map is an array of exactly `len` bytes created with
        // BPF_F_MMAPABLE; the program writes it concurrently, which is why
        // it is only ever accessed through `AtomicU8`s below.
        let mmap = unsafe { MmapOptions::new().len(len).map_mut(&fd) }
            .context("cannot map the admission filter into memory")?;
        Ok(Self { mmap, _map: map })
    }

    fn bytes(&self) -> &[AtomicU8] {
        // SAFETY: `AtomicU8` has the layout of `u8`; the mapping lives as
        // long as `self`.
        unsafe { std::slice::from_raw_parts(self.mmap.as_ptr().cast(), self.mmap.len()) }
    }

    fn half(&self, half: u64) -> &[AtomicU8] {
        let start = (half as usize & 1) * SLOTS as usize;
        &self.bytes()[start..start + SLOTS as usize]
    }

    /// Sets the slot of `src` in `half`.
    pub fn mark_in(&self, half: u64, src: &SourceKey) {
        self.half(half)[filter::slot(src) as usize].store(1, Ordering::Relaxed);
    }

    /// Sets the slot of `src` in both halves: after writing its allow entry
    /// or flow.
    pub fn mark(&self, src: &SourceKey) {
        self.mark_in(0, src);
        self.mark_in(1, src);
    }

    /// Clears every slot of `half`.
    pub fn clear(&self, half: u64) {
        for slot in self.half(half) {
            slot.store(0, Ordering::Relaxed);
        }
    }

    /// How many slots of `half` are set.
    pub fn set_slots(&self, half: u64) -> usize {
        self.half(half).iter().filter(|slot| slot.load(Ordering::Relaxed) != 0).count()
    }

    /// Whether the slot of `src` is set in `half`.
    pub fn is_marked(&self, half: u64, src: &SourceKey) -> bool {
        self.half(half)[filter::slot(src) as usize].load(Ordering::Relaxed) != 0
    }
}
