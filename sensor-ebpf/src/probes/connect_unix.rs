//! `cgroup/connect_unix` (6.7+, cgroup v2; attached at the cgroup2 root, so every process's
//! sockets are covered): unix-socket connects, taken where they happen instead of at the first
//! send on every unix socket (`sock_send_length`, which every socket send of every process
//! pays for). The program runs at the top of the kernel's unix connect, in the connecting
//! task's context, with the kernel's copy of the address: the same records as the syscall
//! dispatch's connect(2) (`net::enter_connect`), a tracked process's connect and an untracked
//! API client's (who it is captured now, while it certainly exists). A process that connects
//! no unix socket pays nothing.
use aya_ebpf::bindings::bpf_sock_addr;

use super::net::{AddrSpace, unix_connect};
use crate::helpers::{config, read_at, tracked_current};

/// Offset of `struct bpf_sock_addr_kern`'s `uaddr` (the kernel's copy of the address the
/// caller passed), set at load from the kernel's BTF; 0: not known (the loader does not attach
/// the program then). The context's own fields give an address only as IPv4/IPv6 words.
#[unsafe(no_mangle)]
static SOCK_ADDR_UADDR_AT: u32 = 0;

/// Verdict for the kernel: let the connect go on. The sensor observes, it never refuses.
const ALLOW: i32 = 1;

#[unsafe(no_mangle)]
#[unsafe(link_section = "cgroup/connect_unix")]
pub fn connect_unix(ctx: *mut bpf_sock_addr) -> i32 {
    if !crate::helpers::idle() {
        let _ = try_connect_unix(ctx as u64);
    }
    ALLOW
}

#[inline(always)]
fn try_connect_unix(ctx: u64) -> Option<()> {
    let cfg = config()?;
    // SAFETY: a volatile read of a constant the loader set, so the compiler keeps the load.
    let at = unsafe { core::ptr::read_volatile(&SOCK_ADDR_UADDR_AT) };
    if at == 0 {
        return None;
    }
    // The context is the kernel's `struct bpf_sock_addr_kern`; read as plain memory.
    let addr: u64 = read_at(ctx, at)?;
    let tracked = tracked_current(cfg).map(|(_, t)| t.flags);
    unix_connect(cfg, addr, AddrSpace::Kernel, tracked)
}
