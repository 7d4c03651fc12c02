//! Live frames (`BPF_F_TEST_XDP_LIVE_FRAMES`) through the raw syscall, and
//! the smallest XDP program there is, to measure what the injection itself
//! costs per frame.
//!
//! In live mode the kernel runs the program on each frame and then treats
//! the verdict as a driver would: XDP_PASS builds an skb and hands the batch
//! to `netif_receive_skb_list`, so the whole stack (netfilter included) runs
//! inside the syscall, on the calling thread, with bottom halves disabled
//! (`net/bpf/test_run.c`, `xdp_test_run_batch`). The calling thread's CPU
//! time is therefore all the receiving side's work for those frames.

use std::{
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    time::Instant,
};

use anyhow::{Result, ensure};

use super::host::thread_cpu_ns;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
/// Frames the kernel prepares per batch (the kernel's default is 64).
const BATCH: u32 = 64;

/// `union bpf_attr` for BPF_PROG_LOAD, up to `expected_attach_type`,
/// padded with zeros as the kernel requires of fields it knows.
#[repr(C)]
struct LoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    _rest: [u8; 64],
}

/// `union bpf_attr` for BPF_PROG_TEST_RUN (the `test` struct).
#[repr(C)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid bpf_attr of its command, of the given size.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, cmd, (attr as *mut T).cast::<u8>(), size_of::<T>() as u32)
    };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(rc) }
}

/// `r0 = XDP_DROP; exit`: the injection's own cost, nothing else.
pub fn load_drop() -> Result<OwnedFd> {
    // struct bpf_insn: code, dst/src registers, offset, immediate.
    let insns: [[u8; 8]; 2] = [
        [0xb7, 0, 0, 0, 1, 0, 0, 0], // BPF_ALU64 | BPF_MOV | BPF_K: r0 = 1 (XDP_DROP)
        [0x95, 0, 0, 0, 0, 0, 0, 0], // BPF_JMP | BPF_EXIT
    ];
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..9].copy_from_slice(b"bench_drp");
    let mut attr = LoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        prog_ifindex: 0,
        expected_attach_type: 0,
        _rest: [0; 64],
    };
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: the kernel returned a new program fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// One live-frames run.
#[derive(Clone, Copy, Debug)]
pub struct LiveRun {
    /// Wall-clock seconds around the syscall.
    pub wall_s: f64,
    /// CPU ns of the calling thread during it.
    pub cpu_ns: f64,
}

/// Injects `frames` copies of `frame` at interface `ifindex` through the
/// program `prog` (live frames); the frames go where its verdict sends them.
pub fn run(prog: BorrowedFd<'_>, frame: &[u8], ifindex: u32, frames: u32) -> Result<LiveRun> {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
    // rx_queue_index, egress_ifindex.
    let md: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
    let mut attr = TestAttr {
        prog_fd: prog.as_raw_fd() as u32,
        retval: 0,
        data_size_in: frame.len() as u32,
        data_size_out: 0,
        data_in: frame.as_ptr() as u64,
        data_out: 0,
        repeat: frames,
        duration: 0,
        ctx_size_in: size_of_val(&md) as u32,
        ctx_size_out: 0,
        ctx_in: md.as_ptr() as u64,
        ctx_out: 0,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        cpu: 0,
        batch_size: BATCH,
        _pad: 0,
    };
    let cpu0 = thread_cpu_ns();
    let start = Instant::now();
    let rc = bpf(BPF_PROG_TEST_RUN, &mut attr);
    let wall_s = start.elapsed().as_secs_f64();
    let cpu_ns = (thread_cpu_ns() - cpu0) as f64;
    ensure!(rc.is_ok(), "BPF_PROG_TEST_RUN with live frames: {}", rc.unwrap_err());
    Ok(LiveRun { wall_s, cpu_ns })
}
