//! Flags for bpf-linker, which generates the program's code.
//!
//! `--disable-expand-memcpy-in-order`: by default bpf-linker asks LLVM to
//! keep copies as ordered load/store pairs for JITs that pattern-match them
//! (none that XDP runs on), which also turns every `memset` (zeroing a key's
//! padding) into a call to a byte-by-byte loop. Without it LLVM writes them
//! as a few plain stores.
fn main() {
    println!("cargo::rustc-link-arg=--disable-expand-memcpy-in-order");
}
