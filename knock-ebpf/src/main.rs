//! The knock-xdp XDP program: parse, decide, count. Nothing is logged per packet.
#![no_std]
#![no_main]

mod maps;
mod parse;

use aya_ebpf::{macros::xdp, programs::XdpContext};
use knock_common::decide::decide;

#[xdp]
pub fn knock(ctx: XdpContext) -> u32 {
    let decision = decide(&maps::BpfMaps, parse::parse(&ctx), maps::KernelClocks);
    maps::count(decision.counter);
    decision.action
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible, so the verifier lets us call GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
