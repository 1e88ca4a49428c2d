//! Engine API requests: the start of each HTTP request an API server (dockerd) reads from a
//! connection, with the connection's peer.
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_user,
        generated::bpf_probe_read_user as read_user_raw,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use sensor_common::{AF_UNIX, ApiData, Event, EventKind, HTTP_CAP, StatReason, feature, track};

use super::net::{WATCH_API, WATCH_DNS, dns_send, sys_arg as syscall_arg, sys_ret as syscall_ret};
use crate::{
    helpers::{
        config, count, fd_key, fill_header, is_api_server, sock_addrs, sock_of_fd, tracked_current,
        unix_peer,
    },
    maps::{EVENTS, ONE_BYTE, PENDING_READ, PendingRead, READ_API, READ_DNS, WATCH_FDS},
};

#[tracepoint(category = "syscalls", name = "sys_enter_read")]
pub fn sys_enter_read(ctx: TracePointContext) -> u32 {
    let _ = try_enter_read(&ctx);
    0
}

#[inline(always)]
fn try_enter_read(ctx: &TracePointContext) -> Option<()> {
    let cfg = config()?;
    let (_, t) = tracked_current(cfg)?;
    let (fd, buf) = (syscall_arg(ctx, 0), syscall_arg(ctx, 1));
    // A DNS socket's reads are responses, also in an API server (dockerd resolves names itself).
    if t.flags & track::DNS_SOCKETS != 0 && super::dns::enter_read(fd, buf) {
        return Some(());
    }
    if !is_api_server(&t) || cfg.features & feature::API_EVENTS == 0 {
        return None;
    }
    let p = PendingRead {
        fd,
        buf,
        kind: READ_API,
    };
    if PENDING_READ
        .insert(&bpf_get_current_pid_tgid(), &p, 0)
        .is_err()
    {
        count(StatReason::ScratchMapFull);
    }
    Some(())
}

#[tracepoint(category = "syscalls", name = "sys_exit_read")]
pub fn sys_exit_read(ctx: TracePointContext) -> u32 {
    let _ = try_exit_read(&ctx);
    0
}

/// No peer known (yet): zero the peer fields of a reserved record.
#[inline(always)]
fn clear_peer(d: &mut ApiData) {
    d.peer_family = 0;
    d.peer_port = 0;
    d.local_port = 0;
    d.peer_pid = 0;
    d.peer_uid = u32::MAX;
    d.peer_addr = [0; 16];
    d.local_addr = [0; 16];
}

/// Whether the first bytes are an HTTP/1 request line.
#[inline(always)]
fn is_request(b: &[u8; 8]) -> bool {
    matches!(
        b,
        [b'G', b'E', b'T', b' ', ..]
            | [b'P', b'O', b'S', b'T', b' ', ..]
            | [b'P', b'U', b'T', b' ', ..]
            | [b'D', b'E', b'L', b'E', b'T', b'E', b' ', ..]
            | [b'H', b'E', b'A', b'D', b' ', ..]
            | [b'P', b'A', b'T', b'C', b'H', b' ', ..]
            | [b'O', b'P', b'T', b'I', b'O', b'N', b'S', b' ']
    )
}

#[inline(always)]
fn try_exit_read(ctx: &TracePointContext) -> Option<()> {
    let key = bpf_get_current_pid_tgid();
    // SAFETY: copied out at once.
    let p = unsafe { PENDING_READ.get(&key) }.copied()?;
    let _ = PENDING_READ.remove(&key);
    let ret = syscall_ret(ctx);
    if p.kind == READ_DNS {
        return super::dns::exit_read(&p, ret);
    }
    let wkey = fd_key(p.fd);
    if ret == 1 {
        let b: u8 = unsafe { bpf_probe_read_user(p.buf as *const u8) }.ok()?;
        if b.is_ascii_uppercase() {
            let _ = ONE_BYTE.insert(&wkey, &b, 0);
        }
        return None;
    }
    if ret < 8 {
        return None;
    }
    let head: [u8; 8] = unsafe { bpf_probe_read_user(p.buf as *const [u8; 8]) }.ok()?;
    let mut prefix = 0u8;
    if !is_request(&head) {
        // SAFETY: copied out at once.
        let b = unsafe { ONE_BYTE.get(&wkey) }.copied()?;
        let joined = [
            b, head[0], head[1], head[2], head[3], head[4], head[5], head[6],
        ];
        if !is_request(&joined) {
            return None;
        }
        prefix = b;
    }
    if unsafe { ONE_BYTE.get(&wkey) }.is_some() {
        let _ = ONE_BYTE.remove(&wkey);
    }
    let cfg = config()?;
    let (_, t) = tracked_current(cfg)?;
    let Some(mut entry) = EVENTS.reserve::<Event<ApiData>>(0) else {
        count(StatReason::RingbufFull);
        return None;
    };
    // SAFETY: sized reservation; data bounded by `len` written below.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.header, EventKind::ApiRequest as u32, t.flags);
    let d = &mut ev.data;
    d.fd = p.fd as i32;
    d.read_len = ret as u32;
    d.prefix = prefix as u32;
    d._pad2 = 0;
    let mut n = ret as u64;
    if n > HTTP_CAP as u64 {
        n = HTTP_CAP as u64;
        count(StatReason::Truncated);
    }
    // SAFETY: n <= HTTP_CAP, the destination's size.
    let r = unsafe { read_user_raw(d.data.as_mut_ptr() as *mut _, n as u32, p.buf as *const _) };
    if r == 0 {
        d.len = n as u16;
    } else {
        d.len = 0;
        count(StatReason::HttpReadFailed);
    }
    clear_peer(d);
    let o = &cfg.offsets;
    match sock_of_fd(o, p.fd).and_then(|sk| sock_addrs(o, sk).map(|a| (sk, a))) {
        Some((sk, a)) => {
            d.peer_family = a.family;
            if a.family == AF_UNIX {
                let (pid, uid) = unix_peer(o, sk);
                d.peer_pid = pid;
                d.peer_uid = uid;
            } else {
                d.peer_port = a.peer_port;
                d.local_port = a.local_port;
                d.peer_addr = a.peer;
                d.local_addr = a.local;
            }
        }
        None => count(StatReason::SockLookupFailed),
    }
    if is_watched(d) {
        let _ = WATCH_FDS.insert(&wkey, &WATCH_API, 0);
    } else if unsafe { WATCH_FDS.get(&wkey) }.is_some() {
        let _ = WATCH_FDS.remove(&wkey);
    }
    entry.submit(0);
    Some(())
}

/// Whether a request line is one whose response stream is worth capturing: POST to a path
/// containing `/build`, `/push` or `/containers/create` (scanned within the first 248 bytes).
#[inline(always)]
fn is_watched(d: &ApiData) -> bool {
    // The path starts after "POST " (or after "OST " when a one-byte read took the "P").
    let mut i = if d.data[0] == b'P' && d.data[1] == b'O' {
        5usize
    } else if d.prefix == b'P' as u32 && d.data[0] == b'O' && d.data[1] == b'S' {
        4usize
    } else {
        return false;
    };
    // Registry-qualified push paths are long (`/v1.41/images/127.0.0.1:5000/team/app/push`).
    while i < 240 {
        if d.data[i] == b' ' || d.data[i] == b'?' {
            break;
        }
        if d.data[i] == b'/' {
            let w = &d.data[i + 1..i + 8];
            if w[..5] == *b"build" || w[..4] == *b"push" || w[..7] == *b"contain" {
                return true;
            }
        }
        i += 1;
    }
    false
}

#[tracepoint(category = "syscalls", name = "sys_enter_write")]
pub fn sys_enter_write(ctx: TracePointContext) -> u32 {
    let _ = try_write(&ctx);
    0
}

#[inline(always)]
fn try_write(ctx: &TracePointContext) -> Option<()> {
    let fd = syscall_arg(ctx, 0);
    let key = fd_key(fd);
    // SAFETY: copied out at once.
    let what = unsafe { WATCH_FDS.get(&key) }.copied()?;
    let buf = syscall_arg(ctx, 1);
    let write_len = syscall_arg(ctx, 2);
    if what == WATCH_DNS {
        return dns_send(ctx, fd, 0, buf, write_len);
    }
    let cfg = config()?;
    let (_, t) = tracked_current(cfg)?;
    let Some(mut entry) = EVENTS.reserve::<Event<ApiData>>(0) else {
        count(StatReason::RingbufFull);
        return None;
    };
    // SAFETY: sized reservation; data bounded by `len` written below.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.header, EventKind::ApiResponse as u32, t.flags);
    let d = &mut ev.data;
    d.fd = fd as i32;
    d.read_len = write_len as u32;
    d.prefix = 0;
    d._pad2 = 0;
    let mut n = write_len;
    if n > HTTP_CAP as u64 {
        n = HTTP_CAP as u64;
    }
    // SAFETY: n <= HTTP_CAP, the destination's size.
    let r = unsafe { read_user_raw(d.data.as_mut_ptr() as *mut _, n as u32, buf as *const _) };
    d.len = if r == 0 { n as u16 } else { 0 };
    clear_peer(d);
    entry.submit(0);
    Some(())
}

#[tracepoint(category = "syscalls", name = "sys_enter_close")]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let key = fd_key(syscall_arg(&ctx, 0));
    // SAFETY: presence check only.
    if unsafe { WATCH_FDS.get(&key) }.is_some() {
        let _ = WATCH_FDS.remove(&key);
    }
    0
}
