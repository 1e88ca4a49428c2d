//! One raw `sys_enter`/`sys_exit` pair for every syscall the sensor reads, instead of a classic
//! `syscalls:*` tracepoint per syscall: a classic syscall tracepoint builds its record for every
//! call of every process before the program's first check, so hooking read/write/close put that
//! cost on every I/O call on the node (measured: 1.85x on a `dd bs=1` storm). Here a syscall the
//! sensor ignores costs one array load (`SYSCALLS`) at entry and one at exit (`PENDING_COUNT`);
//! a watched one from a process outside the runtime trees costs one hash lookup more.
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use sensor_common::{SYSCALL_TABLE, feature, syscall, track};

use super::{api, dns, file, goapi, net};
use crate::{
    helpers::{any_pending, config, syscall_arg, take_pending, tracked_current},
    maps::{READ_ACCEPT, READ_API, READ_DNS, READ_OPEN_WATCHED, SYSCALLS, WRITE_API},
};

const WATCHES_FDS: u32 = track::API_SERVER | track::DNS_SOCKETS | track::FILE_WATCH;

#[raw_tracepoint(tracepoint = "sys_enter")]
// Inlined into the entry point, which ignores its result: left out of line, LLVM drops the
// dead return value and the verifier may find a stack pointer in R0 at exit.
#[inline(always)]
pub fn sys_enter(ctx: RawTracePointContext) -> u32 {
    if crate::helpers::idle() {
        return 0;
    }
    let _ = try_enter(&ctx);
    0
}

#[inline(always)]
fn try_enter(ctx: &RawTracePointContext) -> Option<()> {
    let id: u64 = ctx.arg(1);
    if id >= SYSCALL_TABLE as u64 {
        return None;
    }
    let code = *SYSCALLS.get(id as u32)?;
    if code == syscall::IGNORED {
        return None;
    }
    let cfg = config()?;
    // With the socket hooks this dispatch is attached only for file events.
    if cfg.features & feature::SOCKET_HOOKS != 0 && !is_file_call(code) {
        return None;
    }
    let o = &cfg.offsets;
    let regs: u64 = ctx.arg(0);
    let arg = |n| syscall_arg(o, regs, n);
    // Any process connecting to a runtime's API socket is reported (an API client).
    if code == syscall::CONNECT {
        return net::enter_connect(cfg, arg(0), arg(1));
    }
    let (_, t) = tracked_current(cfg)?;
    match code {
        syscall::READ => api::enter_read(cfg, &t, arg(0), arg(1)),
        // Only API servers, processes that sent DNS queries and writers of build files have
        // watched fds.
        syscall::WRITE if t.flags & WATCHES_FDS != 0 => {
            api::enter_write(cfg, &t, arg(0), arg(1), arg(2))
        }
        syscall::CLOSE if t.flags & WATCHES_FDS != 0 => api::enter_close(arg(0)),
        syscall::ACCEPT | syscall::ACCEPT4 => net::enter_accept(cfg, &t),
        syscall::SENDTO => net::dns_send(cfg, &t, arg(0), arg(4), arg(1), arg(2)),
        syscall::SENDMSG | syscall::SENDMMSG => net::dns_msghdr(cfg, &t, arg(0), arg(1)),
        syscall::RECVFROM if t.flags & track::DNS_SOCKETS != 0 => {
            dns::enter_read(arg(0), arg(1));
            Some(())
        }
        syscall::RECVMSG if t.flags & track::DNS_SOCKETS != 0 => dns::enter_recvmsg(arg(0), arg(1)),
        syscall::OPENAT => file::open(cfg, &t, arg(0) as i32, arg(1), arg(2)),
        syscall::OPENAT2 => file::openat2(cfg, &t, arg(0) as i32, arg(1), arg(2)),
        syscall::OPEN => file::open(cfg, &t, file::AT_FDCWD, arg(0), arg(1)),
        syscall::CREAT => file::creat(cfg, &t, arg(0)),
        syscall::RENAME => file::rename(cfg, &t, file::AT_FDCWD, arg(1)),
        syscall::RENAMEAT | syscall::RENAMEAT2 => file::rename(cfg, &t, arg(2) as i32, arg(3)),
        _ => None,
    }
}

/// The syscalls of file events (opens and renames, writes and closes of watched files).
#[inline(always)]
fn is_file_call(code: u8) -> bool {
    matches!(
        code,
        syscall::OPENAT
            | syscall::OPENAT2
            | syscall::OPEN
            | syscall::CREAT
            | syscall::RENAME
            | syscall::RENAMEAT
            | syscall::RENAMEAT2
            | syscall::WRITE
            | syscall::CLOSE
    )
}

#[raw_tracepoint(tracepoint = "sys_exit")]
// Inlined into the entry point, which ignores its result: left out of line, LLVM drops the
// dead return value and the verifier may find a stack pointer in R0 at exit.
#[inline(always)]
pub fn sys_exit(ctx: RawTracePointContext) -> u32 {
    if crate::helpers::idle() {
        return 0;
    }
    let _ = try_exit(&ctx);
    0
}

/// Processes whose syscalls may be pending at their exit.
const PENDS: u32 = track::API_SERVER | track::DNS_SOCKETS | track::ACCEPTS | track::FILE_WATCH;

#[inline(always)]
fn try_exit(ctx: &RawTracePointContext) -> Option<()> {
    // Every syscall exit of every process passes here. Nothing pending anywhere: leave. Else
    // only a tracked process that can have a pending syscall pays the hash lookup (a daemon
    // blocked in a read keeps the count up for long: its wait must not tax everyone else).
    if !any_pending() {
        return None;
    }
    let cfg = config()?;
    let (_, t) = tracked_current(cfg)?;
    if t.flags & PENDS == 0 {
        return None;
    }
    let p = take_pending()?;
    let ret: i64 = ctx.arg(1);
    match p.kind {
        // The tracked entry taken above serves the handlers: no second lookup.
        READ_API | WRITE_API => goapi::exit(cfg, &t, &p, ret),
        READ_DNS => dns::exit_read(cfg, &t, &p, ret),
        READ_ACCEPT => net::exit_accept(cfg, &t, ret),
        READ_OPEN_WATCHED => file::exit_open_watched(ret),
        _ => None,
    }
}
