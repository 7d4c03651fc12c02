//! The baseline for the benchmarks: an XDP program that passes every frame
//! without reading it. `cargo xtask bench` reports the cost of knock-xdp as a
//! ratio to this program, measured side by side in the same run. It lives
//! with the tests, so the knock-xdp binary never carries it.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[cfg(target_arch = "bpf")]
#[xdp]
pub fn noop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Same licence section as the knock program.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// Not the BPF target: nothing to build.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
