//! Engine API traffic of Go API servers (dockerd) from two uprobes in their binary, so that no
//! hook on the node's socket path is needed for it (`--kernel-hooks narrow`): one at the entry
//! of the Go runtime's raw syscall function (`runtime/internal/syscall.Syscall6`, through which
//! the `syscall` package makes every call), one on the instruction after its `SYSCALL`. At the
//! entry the registers hold the syscall number and its arguments in Go's register ABI (RAX
//! the number, then RBX, RCX, RDI, RSI, R8, R9); after the `SYSCALL` RAX holds the result. A
//! uprobe is attached per API server process (the loader's `attach_api_server`), so no other
//! process traps on it, not even one running the same binary (a `podman build`); the API
//! server pays a trap per hit (measured in docs/design.md).
//!
//! The handlers are the raw syscall dispatch's (`syscalls.rs`): a read of a connection pends
//! and its result is parsed as a request at the exit; a write on a watched connection is the
//! response's bytes, taken at the exit with the count actually written.
use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use sensor_common::{SYSCALL_TABLE, feature, syscall, track};

use super::{api, net::WATCH_API};
use crate::{
    helpers::{any_pending, config, pend, take_pending, tracked_current, watch_clear, watch_get},
    maps::{PendingRead, READ_API, SYSCALLS, WRITE_API},
};

#[uprobe]
// Inlined into the entry point, which ignores its result (see `sys_enter`).
#[inline(always)]
pub fn go_syscall_enter(ctx: ProbeContext) -> u32 {
    if crate::helpers::idle() {
        return 0;
    }
    let _ = try_enter(&ctx);
    0
}

#[inline(always)]
fn try_enter(ctx: &ProbeContext) -> Option<()> {
    // SAFETY: the uprobe's context is the trapped task's user registers, readable in place.
    let regs = unsafe { &*ctx.regs };
    let nr = regs.rax;
    if nr >= SYSCALL_TABLE as u64 {
        return None;
    }
    let code = *SYSCALLS.get(nr as u32)?;
    if !matches!(code, syscall::READ | syscall::WRITE | syscall::CLOSE) {
        return None;
    }
    let cfg = config()?;
    if cfg.features & feature::API_EVENTS == 0 {
        return None;
    }
    let (_, t) = tracked_current(cfg)?;
    if t.flags & track::API_SERVER == 0 {
        return None; // attached to this process only, but it may have exec'd since
    }
    // Go's register ABI: the first three arguments.
    let (fd, buf) = (regs.rbx, regs.rcx);
    match code {
        syscall::READ => pend(&PendingRead {
            fd,
            buf,
            kind: READ_API,
        }),
        syscall::WRITE if watch_get(fd, 0) == Some(WATCH_API) => pend(&PendingRead {
            fd,
            buf,
            kind: WRITE_API,
        }),
        syscall::CLOSE => watch_clear(fd),
        _ => {}
    }
    Some(())
}

#[uprobe]
// Inlined into the entry point, which ignores its result (see `sys_enter`).
#[inline(always)]
pub fn go_syscall_exit(ctx: ProbeContext) -> u32 {
    if crate::helpers::idle() {
        return 0;
    }
    let _ = try_exit(&ctx);
    0
}

#[inline(always)]
fn try_exit(ctx: &ProbeContext) -> Option<()> {
    if !any_pending() {
        return None;
    }
    let cfg = config()?;
    let (_, t) = tracked_current(cfg)?;
    if t.flags & track::API_SERVER == 0 {
        return None;
    }
    let p = take_pending()?;
    // SAFETY: as in try_enter.
    let ret = unsafe { (*ctx.regs).rax } as i64;
    exit(cfg, &t, &p, ret)
}

/// The result `ret` of a call `go_syscall_enter` pended (also taken by the raw `sys_exit`, which
/// runs in between when it is attached for file events and so finds the entry first).
#[inline(always)]
pub fn exit(
    cfg: &sensor_common::Config,
    t: &sensor_common::Tracked,
    p: &PendingRead,
    ret: i64,
) -> Option<()> {
    match p.kind {
        READ_API => api::exit_read(cfg, t, p, ret),
        WRITE_API if ret > 0 => api::response(t, p.fd, p.buf, ret as u64),
        _ => None,
    }
}
