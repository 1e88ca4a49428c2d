//! Files written by tracked processes: opens for writing and renames (the new name), from the
//! raw `sys_enter` dispatch.
use aya_ebpf::helpers::{bpf_probe_read_user, bpf_probe_read_user_str_bytes};
use sensor_common::{Config, EventKind, FileData, PATH_CAP, StatReason, Tracked, feature, file_op};

use crate::helpers::{count, reserve};

const O_WRONLY: u64 = 0o1;
const O_RDWR: u64 = 0o2;
const O_CREAT: u64 = 0o100;
const O_TRUNC: u64 = 0o1000;
pub const AT_FDCWD: i32 = -100;

#[inline(always)]
fn emit(cfg: &Config, t: &Tracked, op: u16, dirfd: i32, path: u64, flags: u64) -> Option<()> {
    if cfg.features & feature::FILE_EVENTS == 0 {
        return None;
    }
    if op == file_op::OPEN_WRITE && flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC) == 0 {
        return None;
    }
    let mut r = reserve::<FileData>(EventKind::FileWrite, t.flags)?;
    let d = &mut r.event().data;
    d.op = op;
    d.flags = flags as u32;
    d.dirfd = dirfd;
    d._pad = 0;
    d.truncated = 0;
    // SAFETY: bpf_probe_read_user_str_bytes checks the source and bounds the copy.
    d.path_len = match unsafe { bpf_probe_read_user_str_bytes(path as *const u8, &mut d.path) } {
        Ok(s) => {
            // A string that fills the buffer may have been cut short.
            if s.len() >= PATH_CAP - 1 {
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
    r.submit();
    Some(())
}

/// open(2)/openat(2).
#[inline(always)]
pub fn open(cfg: &Config, t: &Tracked, dirfd: i32, path: u64, flags: u64) -> Option<()> {
    emit(cfg, t, file_op::OPEN_WRITE, dirfd, path, flags)
}

/// openat2(2): `struct open_how { u64 flags; ... }`.
#[inline(always)]
pub fn openat2(cfg: &Config, t: &Tracked, dirfd: i32, path: u64, how: u64) -> Option<()> {
    // SAFETY: bpf_probe_read_user checks the address.
    let flags: u64 = unsafe { bpf_probe_read_user(how as *const u64) }.unwrap_or(0);
    emit(cfg, t, file_op::OPEN_WRITE, dirfd, path, flags)
}

/// creat(2).
#[inline(always)]
pub fn creat(cfg: &Config, t: &Tracked, path: u64) -> Option<()> {
    emit(
        cfg,
        t,
        file_op::OPEN_WRITE,
        AT_FDCWD,
        path,
        O_CREAT | O_WRONLY | O_TRUNC,
    )
}

/// rename(2)/renameat(2)/renameat2(2): the new name.
#[inline(always)]
pub fn rename(cfg: &Config, t: &Tracked, dirfd: i32, path: u64) -> Option<()> {
    emit(cfg, t, file_op::RENAME, dirfd, path, 0)
}
