//! Builds the benchmarks' no-op XDP program (`noop/`) and puts the object in
//! OUT_DIR, where the bench harness embeds it: only the tests carry it, not
//! the knock-xdp binary.

fn main() -> anyhow::Result<()> {
    // The pinned nightly (see knock-ebpf/rust-toolchain: its LLVM must be
    // bpf-linker's).
    println!("cargo:rerun-if-changed=../knock-ebpf/rust-toolchain");
    let toolchain = std::fs::read_to_string("../knock-ebpf/rust-toolchain")
        .map_err(|err| anyhow::anyhow!("../knock-ebpf/rust-toolchain: {err}"))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "knock-bench-noop", root_dir: "noop", ..Default::default() }],
        aya_build::Toolchain::Custom(toolchain.trim()),
    )
}
