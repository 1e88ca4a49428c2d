//! `cgroup/connect_unix` (6.7+, cgroup v2; attached at the cgroup2 root, so every process's
//! sockets are covered): unix-socket connects, taken where they happen instead of at the first
//! send on every unix socket (`sock_send_length`, which every socket send of every process
//! pays for). The program runs at the top of the kernel's unix connect, in the connecting
//! task's context, with the kernel's copy of the address: the same records as the syscall
//! dispatch's connect(2) (`net::enter_connect`), a tracked process's connect and an untracked
//! API client's (who it is captured now, while it certainly exists; once per process, as at
//! the first send). A process that connects no unix socket pays nothing.
use aya_ebpf::{bindings::bpf_sock_addr, helpers::bpf_probe_read_kernel_str_bytes};
use sensor_common::{UNIX_HEAD_LEN, track};

use super::net::{AddrSpace, unix_connect};
use crate::{
    helpers::{config, read_at, tracked_flags_lookup},
    maps::RUNTIME_SOCKET_HEADS,
};

/// Offsets of `struct bpf_sock_addr_kern`'s `uaddr` (the kernel's copy of the address the
/// caller passed) and `uaddrlen` (its length), set at load from the kernel's BTF; 0: not known
/// (the loader does not attach the program then). The context's own fields give an address
/// only as IPv4/IPv6 words.
#[unsafe(no_mangle)]
static SOCK_ADDR_UADDR_AT: u32 = 0;
#[unsafe(no_mangle)]
static SOCK_ADDR_UADDRLEN_AT: u32 = 0;

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
    // SAFETY: volatile reads of constants the loader set, so the compiler keeps the loads.
    let (at, len_at) = unsafe {
        (
            core::ptr::read_volatile(&SOCK_ADDR_UADDR_AT),
            core::ptr::read_volatile(&SOCK_ADDR_UADDRLEN_AT),
        )
    };
    if at == 0 || len_at == 0 {
        return None;
    }
    let tracked = match tracked_flags_lookup(cfg).1 {
        Some(f) if f & (track::RUNTIME | track::DESCENDANT) != 0 => Some(f),
        // An API client, reported at its first connect: once per process, as the first send
        // on the socket tracepoint did.
        Some(_) => return None,
        None => None,
    };
    // The context is the kernel's `struct bpf_sock_addr_kern`; read as plain memory.
    let addr: u64 = read_at(ctx, at)?;
    let addr_len: u32 = read_at(ctx, len_at)?;
    // The kernel checked it: at most `sizeof(struct sockaddr_un)`; sun_path follows the family.
    let path_bytes = (addr_len as usize).saturating_sub(2);
    if tracked.is_none() && !may_be_runtime_socket(addr, path_bytes) {
        return None;
    }
    unix_connect(cfg, addr, AddrSpace::Kernel { path_bytes }, tracked)
}

/// Whether the path of the kernel `struct sockaddr_un` at `addr` (`path_bytes` of sun_path)
/// starts as a runtime API socket's does (`RUNTIME_SOCKET_HEADS`). An untracked process's
/// connect, nearly always to another socket (a journal, a bus), then costs one short string
/// read and a 16-byte key's lookup, not the whole path's read and a 108-byte key's hash.
/// Abstract names (a leading NUL) never match.
#[inline(always)]
fn may_be_runtime_socket(addr: u64, path_bytes: usize) -> bool {
    let mut head = [0u8; UNIX_HEAD_LEN];
    // At most UNIX_HEAD_LEN - 1 bytes and a NUL, never past what the caller gave (the copy
    // past it is whatever the buffer held); sun_path follows the 2-byte family.
    let size = (path_bytes + 1).min(UNIX_HEAD_LEN);
    // SAFETY: bpf_probe_read_kernel_str_bytes checks the address and bounds by the slice.
    if unsafe { bpf_probe_read_kernel_str_bytes((addr + 2) as *const u8, &mut head[..size]) }
        .is_err()
    {
        return false;
    }
    // SAFETY: presence check only.
    unsafe { RUNTIME_SOCKET_HEADS.get(&head) }.is_some()
}
