//! Files written by tracked processes: opens for writing and renames (the new name), from the
//! raw `sys_enter` dispatch.
use aya_ebpf::helpers::{
    bpf_probe_read_user, bpf_probe_read_user_str_bytes,
    generated::{bpf_probe_read_kernel, bpf_probe_read_user as read_user_raw},
};
use sensor_common::{
    Config, EventKind, FILE_CONTENT_CAP, FILE_CONTENT_CHUNKS, FileContentData, FileData, PATH_CAP,
    StatReason, Tracked, feature, file_op, track,
};

use super::net::WATCH_FILE;
use crate::{
    helpers::{count, fd_key, pend, reserve, set_tracked_flag},
    maps::{PendingRead, READ_OPEN_WATCHED, WATCH_FDS},
};

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
    let watched = op == file_op::OPEN_WRITE && is_build_file(&d.path, d.path_len as usize);
    r.submit();
    if watched {
        // The fd is known at the exit: its writes are the file's content.
        if t.flags & track::FILE_WATCH == 0 {
            set_tracked_flag(track::FILE_WATCH);
        }
        pend(&PendingRead {
            fd: 0,
            buf: 0,
            kind: READ_OPEN_WATCHED,
        });
    }
    Some(())
}

/// Whether a path names a build file: it ends in `Dockerfile`/`dockerfile` (also
/// `x.Dockerfile`) or `Containerfile` (buildah, podman). No loop: this is inlined at every open
/// in the one `sys_enter` program, where a scan of the name took the verifier past its
/// instruction budget. The path's last (up to) 16 bytes are copied to a stack window first.
#[inline(always)]
fn is_build_file(path: &[u8; PATH_CAP], len: usize) -> bool {
    let len = if len > PATH_CAP { PATH_CAP } else { len };
    if len < 10 {
        return false;
    }
    let n = if len < 16 { len } else { 16 };
    let mut w = [0u8; 16];
    // SAFETY: the source is the last n bytes of the path buffer, n <= 16 = the window's size.
    let r = unsafe {
        bpf_probe_read_kernel(
            w.as_mut_ptr() as *mut _,
            (n & 31) as u32,
            path.as_ptr().wrapping_add((len - n) & (PATH_CAP - 1)) as *const _,
        )
    };
    if r != 0 {
        return false;
    }
    let ends = |word: &[u8]| {
        n >= word.len()
            && word
                .iter()
                .enumerate()
                .all(|(k, c)| w[(n - word.len() + k) & 15] == *c)
    };
    ends(b"Containerfile") || (ends(b"ockerfile") && matches!(w[(n - 10) & 15], b'D' | b'd'))
}

/// The exit of an open of a build file: watch the new fd's writes.
#[inline(always)]
pub fn exit_open_watched(ret: i64) -> Option<()> {
    if ret < 0 {
        return None;
    }
    if WATCH_FDS
        .insert(&fd_key(ret as u64), &u64::from(WATCH_FILE), 0)
        .is_err()
    {
        count(StatReason::ScratchMapFull);
        return None;
    }
    Some(())
}

/// A write(2) to a watched build file: its bytes, in chunks (a Dockerfile is written in one
/// or a few writes; past `FILE_CONTENT_CHUNKS` chunks a write is cut, counted as truncated).
#[inline(never)]
pub fn content(t: &Tracked, fd: u64, buf: u64, write_len: u64) -> Option<()> {
    if write_len > (FILE_CONTENT_CAP * FILE_CONTENT_CHUNKS) as u64 {
        count(StatReason::Truncated);
    }
    for chunk in 0..FILE_CONTENT_CHUNKS {
        let off = (chunk * FILE_CONTENT_CAP) as u64;
        if off >= write_len {
            break;
        }
        let left = write_len - off;
        let n = if left > FILE_CONTENT_CAP as u64 {
            FILE_CONTENT_CAP as u64
        } else {
            left
        };
        let mut r = reserve::<FileContentData>(EventKind::FileContent, t.flags)?;
        let d = &mut r.event().data;
        d.fd = fd as i32;
        d.chunk = chunk as u16;
        d.write_len = write_len as u32;
        d._pad = 0;
        // SAFETY: n <= FILE_CONTENT_CAP, the destination's size.
        let rc = unsafe {
            read_user_raw(
                d.data.as_mut_ptr() as *mut _,
                n as u32,
                (buf + off) as *const _,
            )
        };
        d.len = if rc == 0 { n as u16 } else { 0 };
        r.submit();
    }
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
