//! Network: TCP connect outcome, accept, unix-socket connect (also from untracked API clients),
//! and UDP datagrams to port 53.
use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_probe_read_user, bpf_probe_read_user_buf, bpf_probe_read_user_str_bytes},
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use sensor_common::{
    AF_INET, AF_INET6, AF_UNIX, DNS_CAP, DnsData, Event, EventKind, SockData, StatReason,
    UnixConnectData, connect_result, feature, track,
};

use crate::{
    helpers::{config, count, fill_header, read_at, sock_addrs, sock_of_fd, tracked_current},
    maps::{EVENTS, PENDING_CONNECT, PendingConnect, RUNTIME_SOCKETS, SCRATCH_PATH},
};

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;
const IPPROTO_TCP: u16 = 6;

/// A field of a tracepoint record, by a direct load from the context: the verifier checks the
/// constant, aligned offset, and no helper call is paid (these run for every connection and
/// every traced syscall on the host).
#[inline(always)]
pub(crate) fn tp_field<T: Copy>(ctx: &TracePointContext, off: usize) -> T {
    // SAFETY: `off` is a constant offset of a field of this tracepoint's record, aligned to
    // its size; tracepoint programs may read their context directly.
    unsafe { core::ptr::read((ctx.as_ptr() as *const u8).add(off) as *const T) }
}

/// Syscall tracepoint arguments start at offset 16, one 8-byte slot each.
#[inline(always)]
pub(crate) fn sys_arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: the syscall tracepoint record has 6 argument slots.
    tp_field::<u64>(ctx, 16 + 8 * n)
}

#[inline(always)]
pub(crate) fn sys_ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: sys_exit_* records hold `long ret` at 16.
    tp_field::<i64>(ctx, 16)
}

/// TCP state changes, as a BTF tracepoint: the arguments (`sk`, old and new state) come
/// straight from the kernel, without the classic tracepoint's record being built for every
/// state change of every socket on the host; the few fields needed at a connect's outcome are
/// read from the socket with the offsets resolved from BTF.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> u32 {
    let _ = try_sock_state(&ctx);
    0
}

#[inline(always)]
fn try_sock_state(ctx: &BtfTracePointContext) -> Option<()> {
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    // Most state changes are neither the start nor the outcome of a connect: leave first.
    if old != TCP_SYN_SENT && !(old == TCP_CLOSE && new == TCP_SYN_SENT) {
        return None;
    }
    let sk: u64 = ctx.arg(0);
    let cfg = config()?;
    let o = &cfg.offsets;
    if let Some(protocol) = read_at::<u16>(sk, o.sk_protocol)
        && protocol != IPPROTO_TCP
    {
        return None;
    }
    if old == TCP_CLOSE && new == TCP_SYN_SENT {
        // In the connecting task's context.
        if cfg.features & feature::NET_EVENTS == 0 {
            return None;
        }
        let (_, t) = tracked_current(cfg)?;
        let mut p = PendingConnect {
            header: unsafe { core::mem::zeroed() },
        };
        fill_header(&mut p.header, EventKind::Connect as u32, t.flags);
        if PENDING_CONNECT.insert(&sk, &p, 0).is_err() {
            count(StatReason::ScratchMapFull);
        }
        return Some(());
    }
    if new != TCP_ESTABLISHED && new != TCP_CLOSE {
        return None;
    }
    // The outcome, usually in softirq context: the pending entry says who connected.
    let pending = unsafe { PENDING_CONNECT.get(&sk) }.copied()?;
    let _ = PENDING_CONNECT.remove(&sk);
    let Some(mut entry) = EVENTS.reserve::<Event<SockData>>(0) else {
        count(StatReason::RingbufFull);
        return None;
    };
    // SAFETY: sized reservation, all fields written.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.header = pending.header;
    let d = &mut ev.data;
    let a = sock_addrs(o, sk);
    d.family = a.as_ref().map(|a| a.family).unwrap_or(0);
    d.protocol = IPPROTO_TCP;
    d.result = if new == TCP_ESTABLISHED {
        connect_result::ESTABLISHED
    } else {
        connect_result::FAILED
    };
    d.sport = a.as_ref().map(|a| a.local_port).unwrap_or(0);
    d.dport = a.as_ref().map(|a| a.peer_port).unwrap_or(0);
    d._pad = 0;
    d.start_ns = pending.header.ts_ns;
    d.saddr = a.as_ref().map(|a| a.local).unwrap_or([0; 16]);
    d.daddr = a.as_ref().map(|a| a.peer).unwrap_or([0; 16]);
    // The header was taken at SYN_SENT; the event time is the outcome's.
    ev.header.ts_ns = unsafe { aya_ebpf::helpers::bpf_ktime_get_boot_ns() };
    entry.submit(0);
    Some(())
}

#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let _ = try_connect(&ctx);
    0
}

#[inline(always)]
fn try_connect(ctx: &TracePointContext) -> Option<()> {
    let cfg = config()?;
    let tracked = tracked_current(cfg);
    let addr = sys_arg(ctx, 1);
    if addr == 0 {
        return None;
    }
    let family: u16 = unsafe { bpf_probe_read_user(addr as *const u16) }.ok()?;
    if family == AF_UNIX {
        return unix_connect(ctx, addr, tracked.map(|(_, t)| t.flags));
    }
    // A tracked process connecting a socket to port 53 (resolvers that connect, then write):
    // its writes on that fd are DNS queries.
    tracked?;
    if cfg.features & feature::DNS_EVENTS == 0 {
        return None;
    }
    let (_, port, _) = read_sockaddr(addr)?;
    if port == 53 {
        super::dns::watch_dns_fd(sys_arg(ctx, 0));
    }
    None
}

/// `WATCH_FDS` values: what the writes on a watched fd are.
pub const WATCH_API: u32 = 1;
pub const WATCH_DNS: u32 = 2;

#[inline(always)]
fn unix_connect(_ctx: &TracePointContext, addr: u64, tracked_flags: Option<u32>) -> Option<()> {
    let key = SCRATCH_PATH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, exclusive on this CPU while the program runs.
    let key = unsafe { &mut *key };
    for b in key.iter_mut() {
        *b = 0;
    }
    let path_ptr = (addr + 2) as *const u8;
    let mut abstract_ns = 0u16;
    let first: u8 = unsafe { bpf_probe_read_user(path_ptr) }.ok()?;
    let len = if first == 0 {
        // Abstract namespace: the name follows the NUL; read it as a string too.
        abstract_ns = 1;
        unsafe { bpf_probe_read_user_str_bytes(path_ptr.wrapping_add(1), &mut key[..]) }
            .map(|s| s.len())
            .unwrap_or(0)
    } else {
        match unsafe { bpf_probe_read_user_str_bytes(path_ptr, &mut key[..]) } {
            Ok(s) => s.len(),
            Err(_) => {
                count(StatReason::PathReadFailed);
                return None;
            }
        }
    };
    let flags = match tracked_flags {
        Some(f) => f,
        None => {
            // An untracked process: report it only when it talks to a runtime's API socket.
            if abstract_ns != 0 {
                return None;
            }
            unsafe { RUNTIME_SOCKETS.get(&*key) }?;
            // Tracked from now on so that its exit is reported (the end of its request).
            crate::helpers::track(crate::helpers::current_tgid(), track::API_CLIENT, 0);
            track::API_CLIENT
        }
    };
    let Some(mut entry) = EVENTS.reserve::<Event<UnixConnectData>>(0) else {
        count(StatReason::RingbufFull);
        return None;
    };
    // SAFETY: sized reservation, all fields written.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.header, EventKind::UnixConnect as u32, flags);
    ev.data.path_len = len as u16;
    ev.data.abstract_ns = abstract_ns;
    ev.data._pad = 0;
    ev.data.path = *key;
    entry.submit(0);
    Some(())
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    let _ = try_accept(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    let _ = try_accept(&ctx);
    0
}

#[inline(always)]
fn try_accept(ctx: &TracePointContext) -> Option<()> {
    let cfg = config()?;
    if cfg.features & feature::NET_EVENTS == 0 {
        return None;
    }
    let (_, t) = tracked_current(cfg)?;
    let fd = sys_ret(ctx);
    if fd < 0 {
        return None;
    }
    let o = &cfg.offsets;
    let Some(sk) = sock_of_fd(o, fd as u64) else {
        count(StatReason::SockLookupFailed);
        return None;
    };
    let a = sock_addrs(o, sk)?;
    if a.family != AF_INET && a.family != AF_INET6 {
        return None; // unix accepts are seen as api_request peers instead
    }
    let Some(mut entry) = EVENTS.reserve::<Event<SockData>>(0) else {
        count(StatReason::RingbufFull);
        return None;
    };
    // SAFETY: sized reservation, all fields written.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.header, EventKind::Accept as u32, t.flags);
    let d = &mut ev.data;
    d.family = a.family;
    d.protocol = IPPROTO_TCP;
    d.result = connect_result::ESTABLISHED;
    d.sport = a.local_port;
    d.dport = a.peer_port;
    d._pad = 0;
    d.saddr = a.local;
    d.daddr = a.peer;
    d.start_ns = ev.header.ts_ns;
    entry.submit(0);
    Some(())
}

/// A destination from a user `sockaddr` (family, port host order, address).
#[inline(always)]
fn read_sockaddr(addr: u64) -> Option<(u16, u16, [u8; 16])> {
    let family: u16 = unsafe { bpf_probe_read_user(addr as *const u16) }.ok()?;
    let port: u16 = unsafe { bpf_probe_read_user((addr + 2) as *const u16) }.ok()?;
    let mut ip = [0u8; 16];
    if family == AF_INET {
        let v4: [u8; 4] = unsafe { bpf_probe_read_user((addr + 4) as *const [u8; 4]) }.ok()?;
        ip[..4].copy_from_slice(&v4);
    } else if family == AF_INET6 {
        ip = unsafe { bpf_probe_read_user((addr + 8) as *const [u8; 16]) }.ok()?;
    } else {
        return None;
    }
    Some((family, u16::from_be(port), ip))
}

/// Report a datagram to port 53. `dest` is the user sockaddr (0 when the socket is connected).
#[inline(always)]
pub(crate) fn dns_send(
    ctx: &TracePointContext,
    fd: u64,
    dest: u64,
    buf: u64,
    len: u64,
) -> Option<()> {
    let cfg = config()?;
    if cfg.features & feature::DNS_EVENTS == 0 {
        return None;
    }
    let (_, t) = tracked_current(cfg)?;
    let _ = ctx;
    let (family, port, ip) = if dest != 0 {
        read_sockaddr(dest)?
    } else {
        let o = &cfg.offsets;
        let sk = sock_of_fd(o, fd)?;
        let a = sock_addrs(o, sk)?;
        (a.family, a.peer_port, a.peer)
    };
    if port != 53 || buf == 0 {
        return None;
    }
    // The answer comes back on this socket.
    super::dns::watch_dns_fd(fd);
    let Some(mut entry) = EVENTS.reserve::<Event<DnsData>>(0) else {
        count(StatReason::RingbufFull);
        return None;
    };
    // SAFETY: sized reservation; payload bounded by `len` written below.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.header, EventKind::DnsSend as u32, t.flags);
    let d = &mut ev.data;
    d.family = family;
    d.dport = port;
    d.daddr = ip;
    d._pad = 0;
    let n = if len > DNS_CAP as u64 {
        DNS_CAP
    } else {
        len as usize
    };
    d.len = match unsafe { bpf_probe_read_user_buf(buf as *const u8, &mut d.payload[..n]) } {
        Ok(()) => n as u16,
        Err(_) => 0,
    };
    entry.submit(0);
    Some(())
}

#[tracepoint(category = "syscalls", name = "sys_enter_sendto")]
pub fn sys_enter_sendto(ctx: TracePointContext) -> u32 {
    let _ = dns_send(
        &ctx,
        sys_arg(&ctx, 0),
        sys_arg(&ctx, 4),
        sys_arg(&ctx, 1),
        sys_arg(&ctx, 2),
    );
    0
}

/// `struct msghdr` (user ABI): msg_name at 0, msg_iov at 16; `struct iovec`: base 0, len 8.
#[inline(always)]
fn dns_msghdr(ctx: &TracePointContext, fd: u64, msg: u64) -> Option<()> {
    if msg == 0 {
        return None;
    }
    let name: u64 = unsafe { bpf_probe_read_user(msg as *const u64) }.ok()?;
    let iov: u64 = unsafe { bpf_probe_read_user((msg + 16) as *const u64) }.ok()?;
    let base: u64 = unsafe { bpf_probe_read_user(iov as *const u64) }.ok()?;
    let len: u64 = unsafe { bpf_probe_read_user((iov + 8) as *const u64) }.ok()?;
    dns_send(ctx, fd, name, base, len)
}

#[tracepoint(category = "syscalls", name = "sys_enter_sendmsg")]
pub fn sys_enter_sendmsg(ctx: TracePointContext) -> u32 {
    let _ = dns_msghdr(&ctx, sys_arg(&ctx, 0), sys_arg(&ctx, 1));
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_sendmmsg")]
pub fn sys_enter_sendmmsg(ctx: TracePointContext) -> u32 {
    // The first message is enough to learn the name (resolvers send A and AAAA together).
    let _ = dns_msghdr(&ctx, sys_arg(&ctx, 0), sys_arg(&ctx, 1));
    0
}
