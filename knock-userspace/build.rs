//! Builds the XDP program and puts the object in OUT_DIR, where
//! `loader/mod.rs` embeds it. Cargo re-runs this whenever the eBPF crate or
//! the shared types change, so the binary can never carry a stale object.

fn main() -> anyhow::Result<()> {
    // The pinned nightly (see knock-ebpf/rust-toolchain: its LLVM must be
    // bpf-linker's).
    println!("cargo:rerun-if-changed=../knock-ebpf/rust-toolchain");
    let toolchain = std::fs::read_to_string("../knock-ebpf/rust-toolchain")
        .map_err(|err| anyhow::anyhow!("../knock-ebpf/rust-toolchain: {err}"))?;
    // aya-build watches the eBPF crate itself; the shared crate is compiled
    // into the object too.
    println!("cargo:rerun-if-changed=../knock-common");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "knock-ebpf",
            root_dir: "../knock-ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(toolchain.trim()),
    )
}
