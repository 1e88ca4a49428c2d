//! Network: TCP connect outcome, accept, unix-socket connect (also from untracked API clients,
//! with the client's identity), and UDP datagrams to port 53.
use aya_ebpf::{
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes, bpf_probe_read_user,
        bpf_probe_read_user_buf, bpf_probe_read_user_str_bytes,
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use sensor_common::{
    AF_INET, AF_INET6, AF_UNIX, CGROUP_CAP, Config, DNS_CAP, DnsData, EXE_CAP, EventKind, SockData,
    StatReason, Tracked, UNIX_PATH_CAP, UnixConnectData, UnixPathKey, client_flags, connect_result,
    feature, track,
};

use crate::{
    helpers::{
        Reserved, cgroup_components, config, count, current_task, current_tgid, exe_components,
        fill_header, pend, read_argv, read_at, reserve, sock_addrs, sock_of_fd, track,
        tracked_current, unpack,
    },
    maps::{
        LISTENERS, PENDING_CONNECT, PendingConnect, PendingRead, READ_ACCEPT, RUNTIME_SOCKETS,
        SCRATCH_PATH,
    },
};

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_LISTEN: i32 = 10;
const TCP_CLOSE: i32 = 7;
const IPPROTO_TCP: u16 = 6;

/// TCP state changes, as a BTF tracepoint: the arguments (`sk`, old and new state) come
/// straight from the kernel, without the classic tracepoint's record being built for every
/// state change of every socket on the host; the few fields needed at a connect's outcome are
/// read from the socket with the offsets resolved from BTF.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> u32 {
    if crate::helpers::idle() {
        return 0;
    }
    let _ = try_sock_state(&ctx);
    0
}

#[inline(always)]
fn try_sock_state(ctx: &BtfTracePointContext) -> Option<()> {
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    if (old == TCP_SYN_RECV && new == TCP_ESTABLISHED)
        || (old == TCP_CLOSE && new == TCP_LISTEN)
        || (old == TCP_LISTEN && new == TCP_CLOSE)
    {
        return listener_change(ctx.arg(0), new);
    }
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
            // SAFETY: all-zero is a valid header; every field is written by fill_header.
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
    // SAFETY: copied out at once.
    let pending = unsafe { PENDING_CONNECT.get(&sk) }.copied()?;
    let _ = PENDING_CONNECT.remove(&sk);
    let a = sock_addrs(o, sk);
    let mut r = reserve::<SockData>(EventKind::Connect, pending.header.track_flags)?;
    let ev = r.event();
    // The header was taken at SYN_SENT; the event time is the outcome's (set by reserve).
    let now = ev.header.ts_ns;
    ev.header = pending.header;
    ev.header.ts_ns = now;
    let result = if new == TCP_ESTABLISHED {
        connect_result::ESTABLISHED
    } else {
        connect_result::FAILED
    };
    fill_sock(&mut ev.data, a.as_ref(), result, pending.header.ts_ns);
    r.submit();
    Some(())
}

/// With the socket hooks (no accept(2) hook): a tracked process starting to listen on a TCP
/// port (in its context), its listener closing, and a connection to it established (in
/// softirq), which is reported as the listener's accept.
#[inline(always)]
fn listener_change(sk: u64, new: i32) -> Option<()> {
    let cfg = config()?;
    if cfg.features & (feature::SOCKET_HOOKS | feature::NET_EVENTS)
        != feature::SOCKET_HOOKS | feature::NET_EVENTS
    {
        return None;
    }
    let o = &cfg.offsets;
    if read_at::<u16>(sk, o.sk_protocol)? != IPPROTO_TCP {
        return None;
    }
    let key = [
        read_at::<u64>(sk, o.sk_net)?,
        u64::from(read_at::<u16>(sk, o.sk_num)?),
    ];
    if new == TCP_LISTEN {
        let (_, t) = tracked_current(cfg)?;
        let mut p = PendingConnect {
            // SAFETY: all-zero is a valid header; every field is written by fill_header.
            header: unsafe { core::mem::zeroed() },
        };
        fill_header(&mut p.header, EventKind::Accept as u32, t.flags);
        if LISTENERS.insert(&key, &p, 0).is_err() {
            count(StatReason::ScratchMapFull);
        }
        return Some(());
    }
    if new == TCP_CLOSE {
        let _ = LISTENERS.remove(&key);
        return None;
    }
    // SAFETY: copied out at once.
    let l = unsafe { LISTENERS.get(&key) }.copied()?;
    let a = sock_addrs(o, sk)?;
    let mut r = reserve::<SockData>(EventKind::Accept, l.header.track_flags)?;
    let ev = r.event();
    let now = ev.header.ts_ns;
    ev.header = l.header;
    ev.header.ts_ns = now;
    fill_sock(&mut ev.data, Some(&a), connect_result::ESTABLISHED, now);
    r.submit();
    Some(())
}

/// Write a socket's addresses into a record (zeros when they could not be read).
#[inline(always)]
pub(crate) fn fill_sock(
    d: &mut SockData,
    a: Option<&crate::helpers::SockAddrs>,
    result: u16,
    start_ns: u64,
) {
    d.start_ns = start_ns;
    d.family = a.map(|a| a.family).unwrap_or(0);
    d.protocol = IPPROTO_TCP;
    d.result = result;
    d.sport = a.map(|a| a.local_port).unwrap_or(0);
    d.dport = a.map(|a| a.peer_port).unwrap_or(0);
    d._pad = [0; 3];
    d.saddr = a.map(|a| a.local).unwrap_or([0; 16]);
    d.daddr = a.map(|a| a.peer).unwrap_or([0; 16]);
}

/// connect(2) entry, for every process: unix connects of tracked processes, any process's
/// connect to a runtime API socket, and tracked resolvers connecting a socket to port 53.
#[inline(always)]
pub fn enter_connect(cfg: &Config, fd: u64, addr: u64) -> Option<()> {
    if addr == 0 {
        return None;
    }
    let tracked = tracked_current(cfg);
    // SAFETY: bpf_probe_read_user checks the address.
    let family: u16 = unsafe { bpf_probe_read_user(addr as *const u16) }.ok()?;
    if family == AF_UNIX {
        return unix_connect(cfg, addr, AddrSpace::User, tracked.map(|(_, t)| t.flags));
    }
    // A tracked process connecting a socket to port 53 (resolvers that connect, then write):
    // its writes on that fd are DNS queries.
    tracked?;
    if !dns_by_syscalls(cfg) {
        return None;
    }
    let (_, port, _) = read_sockaddr(addr)?;
    if port == 53 {
        super::dns::watch_dns_fd(fd, 0);
    }
    None
}

/// `WATCH_FDS` values: what the writes on a watched fd are.
pub const WATCH_API: u32 = 1;
pub const WATCH_DNS: u32 = 2;
pub const WATCH_FILE: u32 = 3;

/// Where a connect's `struct sockaddr_un` is read from: the caller's memory (connect(2)'s
/// argument, in the syscall dispatch) or the kernel's copy of it (`cgroup/connect_unix`), which
/// holds only the `sun_path` bytes the caller gave (past them is whatever its buffer held: a
/// caller need not count the path's NUL).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum AddrSpace {
    User,
    Kernel { path_bytes: usize },
}

/// Report the unix connect to the `struct sockaddr_un` at `addr` (see [`unix_report`]).
#[inline(always)]
pub(crate) fn unix_connect(
    cfg: &Config,
    addr: u64,
    space: AddrSpace,
    tracked_flags: Option<u32>,
) -> Option<()> {
    let key = scratch_key()?;
    let path_ptr = (addr + 2) as *const u8;
    let mut abstract_ns = 0u16;
    // SAFETY (all reads): the probe-read helpers check the address and bound by the slice.
    let first: u8 = match space {
        AddrSpace::User => unsafe { bpf_probe_read_user(path_ptr) },
        AddrSpace::Kernel { .. } => unsafe { bpf_probe_read_kernel(path_ptr) },
    }
    .ok()?;
    // At most the bytes the kernel's copy holds, and a NUL (the helper stops one short of the
    // size it is given); `skip`: bytes of sun_path before the name.
    let size = |skip: usize| match space {
        AddrSpace::User => UNIX_PATH_CAP,
        AddrSpace::Kernel { path_bytes } => {
            (path_bytes.saturating_sub(skip) + 1).min(UNIX_PATH_CAP)
        }
    };
    let read_str = |src: *const u8, buf: &mut [u8]| match space {
        AddrSpace::User => unsafe { bpf_probe_read_user_str_bytes(src, buf) }.map(|s| s.len()),
        AddrSpace::Kernel { .. } => {
            unsafe { bpf_probe_read_kernel_str_bytes(src, buf) }.map(|s| s.len())
        }
    };
    let len = if first == 0 {
        // Abstract namespace: the name follows the NUL; read it as a string too.
        abstract_ns = 1;
        read_str(path_ptr.wrapping_add(1), &mut key[..size(1)]).unwrap_or(0)
    } else {
        match read_str(path_ptr, &mut key[..size(0)]) {
            Ok(n) => n,
            Err(_) => {
                count(StatReason::PathReadFailed);
                return None;
            }
        }
    };
    unix_report(cfg, key, len, abstract_ns, tracked_flags)
}

/// The per-CPU scratch key, zeroed.
#[inline(always)]
pub(crate) fn scratch_key() -> Option<&'static mut UnixPathKey> {
    let key = SCRATCH_PATH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, exclusive on this CPU while the program runs.
    let key = unsafe { &mut *key };
    for b in key.iter_mut() {
        *b = 0;
    }
    Some(key)
}

/// Whether a socket path (NUL padded, not abstract) is a runtime's API socket.
#[inline(always)]
pub(crate) fn is_runtime_socket(key: &UnixPathKey) -> bool {
    // SAFETY: presence check only.
    unsafe { RUNTIME_SOCKETS.get(key) }.is_some()
}

/// Report a unix connect to the socket at `key` (`len` bytes): a tracked process's (flags
/// given), or an untracked one's to a runtime's API socket (then with who the client is).
#[inline(always)]
pub(crate) fn unix_report(
    cfg: &Config,
    key: &UnixPathKey,
    len: usize,
    abstract_ns: u16,
    tracked_flags: Option<u32>,
) -> Option<()> {
    let runtime_socket = abstract_ns == 0 && is_runtime_socket(key);
    let flags = match tracked_flags {
        Some(f) => f,
        None => {
            // An untracked process: report it only when it talks to a runtime's API socket.
            if !runtime_socket {
                return None;
            }
            // Tracked from now on so that its exit is reported (the end of its request).
            track(current_tgid(), track::API_CLIENT, 0);
            track::API_CLIENT
        }
    };
    let mut r = reserve::<UnixConnectData>(EventKind::UnixConnect, flags)?;
    let d = &mut r.event().data;
    d.path_len = len as u16;
    d.abstract_ns = abstract_ns;
    d.client = 0;
    d._pad = 0;
    d.path = *key;
    d.ppid = 0;
    d.start_time_ns = 0;
    d.exe_len = 0;
    d.argv_len = 0;
    d.cgroup_len = 0;
    d._pad2 = 0;
    // A client of a runtime's API (not a runtime talking to another): who it is, now, while
    // it certainly exists; /proc may be gone by the time its request is read.
    if runtime_socket && flags & track::RUNTIME == 0 {
        fill_client(cfg, d);
    }
    r.submit();
    Some(())
}

#[inline(always)]
fn fill_client(cfg: &Config, d: &mut UnixConnectData) {
    let o = &cfg.offsets;
    let task = current_task();
    let mut f = client_flags::CAPTURED;
    d.ppid = read_at::<u64>(task, o.task_real_parent)
        .and_then(|p| read_at::<u32>(p, o.task_tgid))
        .unwrap_or(0);
    d.start_time_ns = read_at::<u64>(task, o.task_start_boottime).unwrap_or(0);
    match unpack(read_argv(task, o, &mut d.argv)) {
        Some((n, complete)) => {
            d.argv_len = n;
            if !complete {
                f |= client_flags::ARGV_TRUNCATED;
            }
        }
        None => count(StatReason::ArgvReadFailed),
    }
    match unpack(exe_components(task, o, d.exe.as_mut_ptr(), EXE_CAP)) {
        Some((n, complete)) => {
            d.exe_len = n;
            if !complete {
                f |= client_flags::EXE_TRUNCATED;
            }
        }
        None => f |= client_flags::EXE_UNREADABLE,
    }
    if let Some((n, complete)) = unpack(cgroup_components(
        task,
        o,
        d.cgroup.as_mut_ptr(),
        CGROUP_CAP,
    )) {
        d.cgroup_len = n;
        if !complete {
            f |= client_flags::CGROUP_TRUNCATED;
        }
    }
    d.client = f;
}

/// accept(2)/accept4(2) entry of a tracked process: the new fd is known at the exit.
#[inline(always)]
pub fn enter_accept(cfg: &Config, t: &Tracked) -> Option<()> {
    if cfg.features & feature::NET_EVENTS == 0 {
        return None;
    }
    if t.flags & track::ACCEPTS == 0 {
        crate::helpers::set_tracked_flag(track::ACCEPTS);
    }
    pend(&PendingRead {
        fd: 0,
        buf: 0,
        kind: READ_ACCEPT,
    });
    Some(())
}

#[inline(always)]
pub fn exit_accept(cfg: &Config, t: &Tracked, ret: i64) -> Option<()> {
    if ret < 0 {
        return None;
    }
    let o = &cfg.offsets;
    let Some(sk) = sock_of_fd(o, ret as u64) else {
        count(StatReason::SockLookupFailed);
        return None;
    };
    let a = sock_addrs(o, sk)?;
    if a.family != AF_INET && a.family != AF_INET6 {
        return None; // unix accepts are seen as api_request peers instead
    }
    let mut r = reserve::<SockData>(EventKind::Accept, t.flags)?;
    let ev = r.event();
    let now = ev.header.ts_ns;
    fill_sock(&mut ev.data, Some(&a), connect_result::ESTABLISHED, now);
    r.submit();
    Some(())
}

/// A destination from a user `sockaddr` (family, port host order, address).
#[inline(always)]
pub(crate) fn read_sockaddr(addr: u64) -> Option<(u16, u16, [u8; 16])> {
    // SAFETY (all reads): bpf_probe_read_user checks the address.
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
    cfg: &Config,
    t: &Tracked,
    fd: u64,
    dest: u64,
    buf: u64,
    len: u64,
) -> Option<()> {
    if !dns_by_syscalls(cfg) {
        return None;
    }
    let o = &cfg.offsets;
    let sk = if dest != 0 { None } else { sock_of_fd(o, fd) };
    let (family, port, ip) = match sk {
        None => read_sockaddr(dest)?,
        Some(sk) => {
            let a = sock_addrs(o, sk)?;
            (a.family, a.peer_port, a.peer)
        }
    };
    if port != 53 || buf == 0 {
        return None;
    }
    dns_emit(t, fd, sk.unwrap_or(0), family, port, ip, buf, len)
}

/// Report a DNS query of `len` bytes at `buf` sent on fd `fd` (socket `sk`, 0 when not known)
/// to `ip`:`port`, and watch the socket for the answer.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn dns_emit(
    t: &Tracked,
    fd: u64,
    sk: u64,
    family: u16,
    port: u16,
    ip: [u8; 16],
    buf: u64,
    len: u64,
) -> Option<()> {
    // The answer comes back on this socket.
    super::dns::watch_dns_fd(fd, sk);
    let mut r = dns_record(EventKind::DnsSend, t.flags, family, port, ip)?;
    let d = &mut r.event().data;
    let n = crate::helpers::bounded(len, DNS_CAP as u64) as usize;
    // SAFETY: bpf_probe_read_user_buf checks the source; n <= DNS_CAP.
    d.len = match unsafe { bpf_probe_read_user_buf(buf as *const u8, &mut d.payload[..n]) } {
        Ok(()) => n as u16,
        Err(_) => 0,
    };
    r.submit();
    Some(())
}

/// DNS is taken where the syscalls are (the socket tracepoints, or the raw dispatch): DNS events
/// are on and the `cgroup_skb` programs do not take it from the packets (`feature::DNS_SKB`).
#[inline(always)]
pub(crate) fn dns_by_syscalls(cfg: &Config) -> bool {
    cfg.features & (feature::DNS_EVENTS | feature::DNS_SKB) == feature::DNS_EVENTS
}

/// Reserve a DNS record (`DnsSend` or `DnsResponse`) of a process with `flags`, to or from
/// `ip`:`port`, filled but for the payload (`len` 0): the one place DNS records are reserved;
/// each caller copies the message from where it sees it (a user buffer, a packet).
#[inline(always)]
pub(crate) fn dns_record(
    kind: EventKind,
    flags: u32,
    family: u16,
    port: u16,
    ip: [u8; 16],
) -> Option<Reserved<DnsData>> {
    let mut r = reserve::<DnsData>(kind, flags)?;
    let d = &mut r.event().data;
    d.family = family;
    d.dport = port;
    d.daddr = ip;
    d.len = 0;
    d._pad = 0;
    Some(r)
}

/// sendmsg(2)/sendmmsg(2): `struct msghdr` (user ABI) has msg_name at 0, msg_iov at 16;
/// `struct iovec`: base 0, len 8. For sendmmsg the first message is enough to learn the name
/// (resolvers send A and AAAA together).
#[inline(always)]
pub(crate) fn dns_msghdr(cfg: &Config, t: &Tracked, fd: u64, msg: u64) -> Option<()> {
    if msg == 0 || !dns_by_syscalls(cfg) {
        return None;
    }
    // SAFETY: bpf_probe_read_user checks the address.
    let name: u64 = unsafe { bpf_probe_read_user(msg as *const u64) }.ok()?;
    let (base, len) = super::dns::msghdr_buf(msg)?;
    dns_send(cfg, t, fd, name, base, len)
}
