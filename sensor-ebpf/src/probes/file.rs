//! Files written by tracked processes: opens for writing and renames (the new name).
use aya_ebpf::{
    helpers::{bpf_probe_read_user, bpf_probe_read_user_str_bytes},
    macros::tracepoint,
    programs::TracePointContext,
};
use sensor_common::{Event, EventKind, FileData, StatReason, feature, file_op};

use super::net::sys_arg as syscall_arg;
use crate::{
    helpers::{config, count, fill_header, tracked_current},
    maps::EVENTS,
};

const O_WRONLY: u64 = 0o1;
const O_RDWR: u64 = 0o2;
const O_CREAT: u64 = 0o100;
const O_TRUNC: u64 = 0o1000;
const AT_FDCWD: i32 = -100;

#[inline(always)]
fn emit(op: u16, dirfd: i32, path: u64, flags: u64) -> Option<()> {
    let cfg = config()?;
    if cfg.features & feature::FILE_EVENTS == 0 {
        return None;
    }
    let (_, t) = tracked_current(cfg)?;
    if op == file_op::OPEN_WRITE && flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC) == 0 {
        return None;
    }
    let Some(mut entry) = EVENTS.reserve::<Event<FileData>>(0) else {
        count(StatReason::RingbufFull);
        return None;
    };
    // SAFETY: sized reservation; the path is bounded by path_len written below.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.header, EventKind::FileWrite as u32, t.flags);
    let d = &mut ev.data;
    d.op = op;
    d.flags = flags as u32;
    d.dirfd = dirfd;
    d._pad = 0;
    d.truncated = 0;
    d.path_len = match unsafe { bpf_probe_read_user_str_bytes(path as *const u8, &mut d.path) } {
        Ok(s) => {
            // A string that fills the buffer may have been cut short.
            if s.len() >= sensor_common::PATH_CAP - 1 {
                d.truncated = 1;
                count(StatReason::Truncated);
            }
            s.len() as u16
        }
        Err(_) => {
            count(StatReason::PathReadFailed);
            0
        }
    };
    entry.submit(0);
    Some(())
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat")]
pub fn sys_enter_openat(ctx: TracePointContext) -> u32 {
    let _ = emit(
        file_op::OPEN_WRITE,
        syscall_arg(&ctx, 0) as i32,
        syscall_arg(&ctx, 1),
        syscall_arg(&ctx, 2),
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat2")]
pub fn sys_enter_openat2(ctx: TracePointContext) -> u32 {
    let how = syscall_arg(&ctx, 2);
    // struct open_how { u64 flags; ... }
    let flags: u64 = unsafe { bpf_probe_read_user(how as *const u64) }.unwrap_or(0);
    let _ = emit(
        file_op::OPEN_WRITE,
        syscall_arg(&ctx, 0) as i32,
        syscall_arg(&ctx, 1),
        flags,
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_open")]
pub fn sys_enter_open(ctx: TracePointContext) -> u32 {
    let _ = emit(
        file_op::OPEN_WRITE,
        AT_FDCWD,
        syscall_arg(&ctx, 0),
        syscall_arg(&ctx, 1),
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_creat")]
pub fn sys_enter_creat(ctx: TracePointContext) -> u32 {
    let _ = emit(
        file_op::OPEN_WRITE,
        AT_FDCWD,
        syscall_arg(&ctx, 0),
        O_CREAT | O_WRONLY | O_TRUNC,
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_rename")]
pub fn sys_enter_rename(ctx: TracePointContext) -> u32 {
    let _ = emit(file_op::RENAME, AT_FDCWD, syscall_arg(&ctx, 1), 0);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_renameat")]
pub fn sys_enter_renameat(ctx: TracePointContext) -> u32 {
    let _ = emit(
        file_op::RENAME,
        syscall_arg(&ctx, 2) as i32,
        syscall_arg(&ctx, 3),
        0,
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_renameat2")]
pub fn sys_enter_renameat2(ctx: TracePointContext) -> u32 {
    let _ = emit(
        file_op::RENAME,
        syscall_arg(&ctx, 2) as i32,
        syscall_arg(&ctx, 3),
        0,
    );
    0
}
