//! Engine API requests: the start of each HTTP request an API server (dockerd) reads from a
//! connection, with the connection's peer; and the server's writes on connections that carried
//! a watched request (build, push, container create).
use aya_ebpf::helpers::{bpf_probe_read_user, generated::bpf_probe_read_user as read_user_raw};
use sensor_common::{
    AF_UNIX, ApiData, Config, EventKind, HTTP_CAP, StatReason, Tracked, feature, track,
};

use super::net::{WATCH_API, WATCH_DNS, WATCH_FILE, dns_send};
use crate::{
    helpers::{
        count, fd_key, is_api_server, pend, reserve, sock_addrs, sock_of_fd, unix_peer,
        watch_clear, watch_get, watch_set,
    },
    maps::{ONE_BYTE, PendingRead, READ_API},
};

/// read(2) entry of a tracked process: DNS responses on its DNS sockets, requests on an API
/// server's connections.
#[inline(always)]
pub fn enter_read(cfg: &Config, t: &Tracked, fd: u64, buf: u64) -> Option<()> {
    // A DNS socket's reads are responses, also in an API server (dockerd resolves names itself).
    if t.flags & track::DNS_SOCKETS != 0 && super::dns::enter_read(fd, buf) {
        return Some(());
    }
    if !is_api_server(t) || cfg.features & feature::API_EVENTS == 0 {
        return None;
    }
    pend(&PendingRead {
        fd,
        buf,
        kind: READ_API,
    });
    Some(())
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

/// Copy up to `HTTP_CAP` bytes of a user buffer into a record; returns the bytes copied (0 when
/// unreadable).
#[inline(always)]
fn copy_data(d: &mut ApiData, buf: u64, len: u64) -> Option<u16> {
    let n = if len > HTTP_CAP as u64 {
        HTTP_CAP as u64
    } else {
        len
    };
    // SAFETY: n <= HTTP_CAP, the destination's size.
    let r = unsafe { read_user_raw(d.data.as_mut_ptr() as *mut _, n as u32, buf as *const _) };
    (r == 0).then_some(n as u16)
}

/// read(2) exit of an API server: a buffer that starts an HTTP request is reported.
#[inline(always)]
pub fn exit_read(cfg: &Config, t: &Tracked, p: &PendingRead, ret: i64) -> Option<()> {
    request(cfg, t, p.fd, p.buf, ret, None)
}

/// `ret` bytes an API server read from fd `fd` into `buf` (its socket `sk` when the hook knows
/// it, else found from the fd): a buffer that starts an HTTP request is reported.
#[inline(always)]
pub fn request(
    cfg: &Config,
    t: &Tracked,
    fd: u64,
    buf: u64,
    ret: i64,
    sk: Option<u64>,
) -> Option<()> {
    let wkey = fd_key(fd);
    if ret == 1 {
        // SAFETY: bpf_probe_read_user checks the address.
        let b: u8 = unsafe { bpf_probe_read_user(buf as *const u8) }.ok()?;
        if b.is_ascii_uppercase() {
            let _ = ONE_BYTE.insert(&wkey, &b, 0);
        }
        return None;
    }
    if ret < 8 {
        return None;
    }
    // SAFETY: bpf_probe_read_user checks the address.
    let head: [u8; 8] = unsafe { bpf_probe_read_user(buf as *const [u8; 8]) }.ok()?;
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
    // SAFETY: presence check only.
    if unsafe { ONE_BYTE.get(&wkey) }.is_some() {
        let _ = ONE_BYTE.remove(&wkey);
    }
    let mut r = reserve::<ApiData>(EventKind::ApiRequest, t.flags)?;
    let d = &mut r.event().data;
    d.fd = fd as i32;
    d.read_len = ret as u32;
    d.prefix = prefix as u32;
    d._pad2 = 0;
    if ret as u64 > HTTP_CAP as u64 {
        count(StatReason::Truncated);
    }
    d.len = match copy_data(d, buf, ret as u64) {
        Some(n) => n,
        None => {
            count(StatReason::HttpReadFailed);
            0
        }
    };
    clear_peer(d);
    let o = &cfg.offsets;
    let sk = sk.or_else(|| sock_of_fd(o, fd));
    match sk.and_then(|sk| sock_addrs(o, sk).map(|a| (sk, a))) {
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
        watch_set(fd, WATCH_API, sk.unwrap_or(0));
    } else {
        watch_clear(fd);
    }
    r.submit();
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

/// write(2) entry of a tracked process: a watched API connection's response, or a DNS query
/// on a connected DNS socket.
#[inline(always)]
pub fn enter_write(cfg: &Config, t: &Tracked, fd: u64, buf: u64, write_len: u64) -> Option<()> {
    let what = watch_get(fd, 0)?;
    if what == WATCH_FILE {
        return super::file::content(t, fd, buf, write_len);
    }
    // With the socket hooks, sockets' writes are theirs (`sock_send_length`).
    if cfg.features & feature::SOCKET_HOOKS != 0 {
        return None;
    }
    if what == WATCH_DNS {
        return dns_send(cfg, t, fd, 0, buf, write_len);
    }
    response(t, fd, buf, write_len)
}

/// `len` bytes an API server wrote from `buf` on a watched connection's fd `fd`.
#[inline(always)]
pub fn response(t: &Tracked, fd: u64, buf: u64, write_len: u64) -> Option<()> {
    let mut r = reserve::<ApiData>(EventKind::ApiResponse, t.flags)?;
    let d = &mut r.event().data;
    d.fd = fd as i32;
    d.read_len = write_len as u32;
    d.prefix = 0;
    d._pad2 = 0;
    d.len = copy_data(d, buf, write_len).unwrap_or(0);
    clear_peer(d);
    r.submit();
    Some(())
}

/// close(2) entry of a tracked process: the connection is no longer watched.
#[inline(always)]
pub fn enter_close(fd: u64) -> Option<()> {
    watch_clear(fd);
    Some(())
}
