//! Socket hooks (kernels with the `sock_recv_length`/`sock_send_length` tracepoints, 6.3+):
//! what the raw `sys_enter`/`sys_exit` dispatch took at every syscall of every process, taken
//! only where socket data was received or sent. Both fire after the transfer, in the caller's
//! context, with the socket and the byte count; which syscall it was and its fd and buffer
//! come from the user registers saved at the syscall's entry, so the bytes are read from the
//! caller's own buffer as before. A process that does no socket I/O pays nothing; one that
//! does pays one program run per transfer, which leaves after the tracked-process cache check
//! unless the process is tracked or the socket is a named unix socket. Accepts are taken from
//! the TCP state changes instead (`net.rs`).
use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_probe_read_kernel_str_bytes, bpf_probe_read_user},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use sensor_common::{AF_INET, AF_INET6, AF_UNIX, Config, Tracked, feature, syscall, track};

use super::{
    api, dns,
    net::{WATCH_API, WATCH_DNS, dns_by_syscalls, dns_emit, is_runtime_socket, read_sockaddr},
};
use crate::{
    helpers::{
        Call, config, current_call, is_api_server, read_at, runtime_epoch, sock_addrs,
        tracked_current, tracked_flags_lookup, watch_get,
    },
    maps::{LAST_SEEN_UNIX, MMSG_INDEX, NOT_RUNTIME_ADDR, SEEN_UNIX, UPROBED},
};

/// Offsets of `struct sock`'s `skc_family` and `sk_protocol`, set at load from the kernel's
/// BTF (0: not known). Load-time constants (.rodata, frozen), so the verifier lets these two
/// fields be read straight through the tracepoint's typed `struct sock *` instead of by a
/// helper call each: the send path is one that every process on the node pays for.
#[unsafe(no_mangle)]
static SK_FAMILY_AT: u32 = 0;
#[unsafe(no_mangle)]
static SK_PROTOCOL_AT: u32 = 0;
/// Offsets of `struct sock`'s `sk_peer_pid` and of `struct pid`'s `numbers[0].nr` (0: not
/// known), for the same direct loads (see `peer_is_self`).
#[unsafe(no_mangle)]
static SK_PEER_PID_AT: u32 = 0;
#[unsafe(no_mangle)]
static PID_NR_AT: u32 = 0;

/// A `u16` field of the tracepoint's socket at load-time offset `at` (see SK_FAMILY_AT), or
/// through `bpf_probe_read_kernel` at `fallback` when the offset was not set.
#[inline(always)]
fn sk_u16(ctx: &BtfTracePointContext, at: &'static u32, fallback: u32) -> Option<u16> {
    // SAFETY: a volatile read of a constant the loader set, so the compiler keeps the load.
    let at = unsafe { core::ptr::read_volatile(at) };
    if at == 0 {
        return read_at(sock_arg(ctx)?, fallback);
    }
    // The socket as the verifier types it.
    let typed: *const u8 = ctx.arg(0);
    // SAFETY: the tracepoint's `struct sock *`: the verifier checks the field against the
    // kernel's BTF and makes the load fault-safe.
    Some(unsafe { core::ptr::read_volatile(typed.add(at as usize) as *const u16) })
}

/// The peer credentials of the tracepoint's unix socket name process `tgid`: a socketpair that
/// process made (`init_peercred` gives both ends its creator's), never a connection to a
/// listener (`copy_peercred` gives the connecting end the listener's). Two direct loads, no
/// helper call: what the untracked socketpair traffic of every process pays for. False when an
/// offset is unknown (the full check runs then).
#[inline(always)]
fn peer_is_self(ctx: &BtfTracePointContext, tgid: u32) -> bool {
    // SAFETY: volatile reads of constants the loader set, so the compiler keeps the loads.
    let (pid_at, nr_at) = unsafe {
        (
            core::ptr::read_volatile(&SK_PEER_PID_AT),
            core::ptr::read_volatile(&PID_NR_AT),
        )
    };
    if pid_at == 0 || nr_at == 0 {
        return false;
    }
    let typed: *const u8 = ctx.arg(0);
    // SAFETY: loads through the tracepoint's `struct sock *` and the `struct pid *` it holds:
    // the verifier checks both fields against the kernel's BTF and makes the loads fault-safe
    // (a NULL `sk_peer_pid` reads as 0).
    unsafe {
        let pid = core::ptr::read_volatile(typed.add(pid_at as usize) as *const *const u8);
        if pid.is_null() {
            return false;
        }
        core::ptr::read_volatile(pid.add(nr_at as usize) as *const u32) == tgid
    }
}

const MSG_PEEK: i32 = 2;
const IPPROTO_UDP: u16 = 17;
/// `struct mmsghdr` (user ABI): a `struct msghdr` (56 bytes) and `msg_len`, padded to 64.
const MMSGHDR_SIZE: u64 = 64;

#[btf_tracepoint(function = "sock_recv_length")]
// Inlined into the entry point, which ignores its result: left out of line, LLVM drops the
// dead return value and the verifier may find a stack pointer in R0 at exit.
#[inline(always)]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> u32 {
    if crate::helpers::idle() {
        return 0;
    }
    let _ = try_recv(&ctx);
    0
}

#[inline(always)]
fn try_recv(ctx: &BtfTracePointContext) -> Option<()> {
    let ret: i32 = ctx.arg(1);
    if ret <= 0 {
        return None;
    }
    let cfg = config()?;
    let (_, t) = tracked_current(cfg)?;
    let flags = t.flags;
    let peek: i32 = ctx.arg(2);
    if flags & (track::API_SERVER | track::DNS_SOCKETS) == 0 || peek & MSG_PEEK != 0 {
        return None;
    }
    let sk = sock_arg(ctx)?;
    let o = &cfg.offsets;
    let c = current_call(o)?;
    let fd = c.arg(o, 0);
    let buf = match c.code {
        syscall::READ | syscall::RECVFROM => c.arg(o, 1),
        syscall::RECVMSG => dns::msghdr_buf(c.arg(o, 1))?.0,
        _ => return None,
    };
    // Positive here; zero-extended so that the verifier keeps its lower bound.
    let ret = i64::from(ret as u32);
    if flags & track::DNS_SOCKETS != 0
        && dns_by_syscalls(cfg)
        && watch_get(fd, sk) == Some(WATCH_DNS)
    {
        return dns::response(cfg, &t, Some(sk), buf, ret);
    }
    if !api_here(&t) || cfg.features & feature::API_EVENTS == 0 {
        return None;
    }
    api::request(cfg, &t, fd, buf, ret, Some(sk))
}

/// Whether the socket hooks take this process's Engine API traffic: an API server's, unless
/// uprobes in it do (`goapi.rs`).
#[inline(always)]
fn api_here(t: &Tracked) -> bool {
    // SAFETY: presence check only.
    is_api_server(t) && unsafe { UPROBED.get(&crate::helpers::current_tgid()) }.is_none()
}

/// The tracepoint's socket, as a plain number: the verifier types `ctx.arg(0)` as a pointer
/// to `struct sock`, on which the masking of `WATCH_FDS` values is refused; it is only ever
/// read with `bpf_probe_read_kernel` and used as a key.
#[inline(always)]
fn sock_arg(ctx: &BtfTracePointContext) -> Option<u64> {
    read_at::<u64>(ctx.as_ptr() as u64, 0)
}

#[btf_tracepoint(function = "sock_send_length")]
// Inlined into the entry point, which ignores its result: left out of line, LLVM drops the
// dead return value and the verifier may find a stack pointer in R0 at exit.
#[inline(always)]
pub fn sock_send_length(ctx: BtfTracePointContext) -> u32 {
    if crate::helpers::idle() {
        return 0;
    }
    let _ = try_send(&ctx);
    0
}

#[inline(always)]
fn try_send(ctx: &BtfTracePointContext) -> Option<()> {
    let ret: i32 = ctx.arg(1);
    if ret <= 0 {
        return None;
    }
    let cfg = config()?;
    let o = &cfg.offsets;
    let family = sk_u16(ctx, &SK_FAMILY_AT, o.sk_family)?;
    let (tgid, tracked) = tracked_flags_lookup(cfg);
    let Some(flags) = tracked else {
        // Not tracked: a client of a runtime's API, sending its first request? Not when the
        // peer's credentials are this process's own (a socketpair it made): a client's are the
        // listener's. The socket as the tracepoint gives it: only added to and read through,
        // which the verifier allows on its typed pointer, so no copy (`sock_arg`) is needed.
        // Not when `cgroup/connect_unix` took the client at its connect.
        return if family == AF_UNIX
            && cfg.features & feature::UNIX_CONNECT == 0
            && !peer_is_self(ctx, tgid)
        {
            client_send(cfg, ctx.arg(0))
        } else {
            None
        };
    };
    if flags & (track::RUNTIME | track::DESCENDANT) == 0 {
        return None; // an API client already reported
    }
    let t = Tracked { flags, depth: 0 };
    if family == AF_UNIX && cfg.features & feature::UNIX_CONNECT == 0 {
        // The typed pointer, as for client_send: only a key and a base here. Not when
        // `cgroup/connect_unix` reported the connect itself.
        first_unix_send(cfg, &t, ctx.arg(0));
    }
    let inet = family == AF_INET || family == AF_INET6;
    let dns = inet
        && dns_by_syscalls(cfg)
        && sk_u16(ctx, &SK_PROTOCOL_AT, o.sk_protocol) == Some(IPPROTO_UDP);
    // The syscall's registers only where they can matter: an API server's write, a UDP send.
    if !dns && !api_here(&t) {
        return None;
    }
    // A plain number from here on (see sock_arg), for the WATCH_FDS comparisons.
    let sk = sock_arg(ctx)?;
    let c = current_call(o)?;
    if dns {
        return dns_query(cfg, &t, sk, &c, u64::from(ret as u32));
    }
    let fd = c.arg(o, 0);
    if c.code == syscall::WRITE && watch_get(fd, sk) == Some(WATCH_API) {
        return api::response(&t, fd, c.arg(o, 1), u64::from(ret as u32));
    }
    None
}

/// A tracked process's send on a UDP socket: a DNS query when it goes to port 53 (the socket's
/// peer when connected, else the destination the call names).
#[inline(always)]
fn dns_query(cfg: &Config, t: &Tracked, sk: u64, c: &Call, len: u64) -> Option<()> {
    let o = &cfg.offsets;
    let fd = c.arg(o, 0);
    let a1 = c.arg(o, 1);
    // The message's buffer and named destination (0: none).
    let (buf, dest) = match c.code {
        syscall::WRITE => (a1, 0),
        syscall::SENDTO => (a1, c.arg(o, 4)),
        syscall::SENDMSG => (dns::msghdr_buf(a1)?.0, msg_name(a1)),
        syscall::SENDMMSG => {
            let msg = a1 + MMSGHDR_SIZE * mmsg_index(a1, c.arg(o, 2));
            (dns::msghdr_buf(msg)?.0, msg_name(msg))
        }
        _ => return None,
    };
    let (family, port, ip) = if dest != 0 {
        read_sockaddr(dest)?
    } else {
        let a = sock_addrs(o, sk)?;
        (a.family, a.peer_port, a.peer)
    };
    if port != 53 || buf == 0 {
        return None;
    }
    dns_emit(t, fd, sk, family, port, ip, buf, len)
}

/// `msg_name` of a user `struct msghdr` (0 when unreadable or none).
#[inline(always)]
fn msg_name(msg: u64) -> u64 {
    // SAFETY: bpf_probe_read_user checks the address.
    unsafe { bpf_probe_read_user(msg as *const u64) }.unwrap_or(0)
}

/// Which message of a sendmmsg(2) over `vec` (`vlen` messages) this send is: the tracepoint
/// fires once per message, in order, with no index; a new vector or a full round starts at 0.
#[inline(always)]
fn mmsg_index(vec: u64, vlen: u64) -> u64 {
    let key = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    // SAFETY: copied out at once.
    let prev = unsafe { MMSG_INDEX.get(&key) }.copied();
    let i = match prev {
        Some([v, i]) if v == vec && i + 1 < vlen => i + 1,
        _ => 0,
    };
    let _ = MMSG_INDEX.insert(&key, &[vec, i & 0xff], 0);
    i & 0xff
}

/// The first send of a tracked process on a unix socket: its connect, to the peer's address.
#[inline(always)]
fn first_unix_send(cfg: &Config, t: &Tracked, sk: u64) -> Option<()> {
    let last = LAST_SEEN_UNIX.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; the program runs with migration disabled.
    if unsafe { *last } == sk {
        return None;
    }
    // SAFETY: presence check only.
    let seen = unsafe { SEEN_UNIX.get(&sk) }.is_some();
    // SAFETY: as above.
    unsafe { *last = sk };
    if seen {
        return None;
    }
    let _ = SEEN_UNIX.insert(&sk, &0, 0);
    let addr = peer_addr(cfg, sk)?;
    let (key, len, abstract_ns) = addr_path(cfg, addr)?;
    super::net::unix_report(cfg, key, len, abstract_ns, Some(t.flags))
}

/// An untracked process's send on a unix socket: when its peer was bound to a runtime's API
/// socket, this is a client's first request. Reported (with who the client is) and the
/// process tracked as an API client, so that its later sends leave at the cache check.
#[inline(always)]
fn client_send(cfg: &Config, sk: u64) -> Option<()> {
    let addr = peer_addr(cfg, sk)?;
    let epoch = runtime_epoch();
    // SAFETY: copied out at once.
    if unsafe { NOT_RUNTIME_ADDR.get(&addr) }.copied() == Some(epoch) {
        return None;
    }
    let (key, len, abstract_ns) = addr_path(cfg, addr)?;
    if abstract_ns != 0 || !is_runtime_socket(key) {
        let _ = NOT_RUNTIME_ADDR.insert(&addr, &epoch, 0);
        return None;
    }
    super::net::unix_report(cfg, key, len, abstract_ns, None)
}

/// The address (`struct unix_address *`) the peer of unix socket `sk` is bound to: a listener's
/// (the sockets it accepts share it); `None` for unnamed peers (socketpair) or no peer.
#[inline(always)]
fn peer_addr(cfg: &Config, sk: u64) -> Option<u64> {
    let o = &cfg.offsets;
    let peer: u64 = read_at(sk, o.unix_peer)?;
    let addr: u64 = read_at(peer, o.unix_addr)?;
    (addr != 0).then_some(addr)
}

/// The path of a unix address, into the scratch key: (key, length, abstract).
#[inline(always)]
fn addr_path(
    cfg: &Config,
    addr: u64,
) -> Option<(&'static mut sensor_common::UnixPathKey, usize, u16)> {
    let o = &cfg.offsets;
    if o.unix_addr_name == sensor_common::OFFSET_MISSING {
        return None;
    }
    let total: i32 = read_at(addr, o.unix_addr_len)?;
    // sun_path follows the 2-byte family.
    let path = addr + o.unix_addr_name as u64 + 2;
    let first: u8 = read_at(path, 0)?;
    let key = super::net::scratch_key()?;
    let (src, abstract_ns) = if first == 0 {
        (path + 1, 1u16)
    } else {
        (path, 0)
    };
    // SAFETY: bpf_probe_read_kernel_str_bytes checks the address and bounds by the slice.
    let n = unsafe { bpf_probe_read_kernel_str_bytes(src as *const u8, &mut key[..]) }
        .map(|s| s.len())
        .ok()?;
    // An abstract name is not NUL terminated: its length is the address's.
    let len = if abstract_ns != 0 {
        let l = (total as usize).saturating_sub(3);
        if l < n { l } else { n }
    } else {
        n
    };
    Some((key, len, abstract_ns))
}
