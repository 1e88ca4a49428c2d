//! DNS responses: what a tracked process reads back from a socket it sent a query to port 53
//! on (marked in `WATCH_FDS` by the query). With the queries (`net.rs`), they let userspace name
//! the addresses a build step connects to.
use aya_ebpf::helpers::{bpf_probe_read_user, generated::bpf_probe_read_user as read_user_raw};
use sensor_common::{Config, DNS_CAP, DnsData, EventKind, StatReason, Tracked, track};

use super::net::WATCH_DNS;
use crate::{
    helpers::{count, fd_key, pend, reserve, sock_addrs, sock_of_fd},
    maps::{PendingRead, READ_DNS, WATCH_FDS},
};

/// Mark `fd` of the current process as a DNS socket: its reads are responses.
#[inline(always)]
pub fn watch_dns_fd(fd: u64) {
    let _ = WATCH_FDS.insert(&fd_key(fd), &WATCH_DNS, 0);
    crate::helpers::set_tracked_flag(track::DNS_SOCKETS);
}

/// At a read-like syscall's entry: remember the buffer when `fd` is a watched DNS socket.
#[inline(always)]
pub fn enter_read(fd: u64, buf: u64) -> bool {
    // SAFETY: copied out at once.
    if unsafe { WATCH_FDS.get(&fd_key(fd)) }.copied() != Some(WATCH_DNS) {
        return false;
    }
    pend(&PendingRead {
        fd,
        buf,
        kind: READ_DNS,
    });
    true
}

/// recvmsg(2) entry: `struct msghdr` (user ABI) has msg_iov at 16; `struct iovec`: base at 0.
#[inline(always)]
pub fn enter_recvmsg(fd: u64, msg: u64) -> Option<()> {
    // SAFETY (both reads): bpf_probe_read_user checks the address.
    let iov: u64 = unsafe { bpf_probe_read_user((msg + 16) as *const u64) }.ok()?;
    let base: u64 = unsafe { bpf_probe_read_user(iov as *const u64) }.ok()?;
    if base != 0 {
        enter_read(fd, base);
    }
    Some(())
}

/// At the exit: the response that was read, with the server it came from.
#[inline(always)]
pub fn exit_read(cfg: &Config, t: &Tracked, p: &PendingRead, ret: i64) -> Option<()> {
    if ret < 12 {
        return None; // shorter than a DNS header, or an error
    }
    let mut r = reserve::<DnsData>(EventKind::DnsResponse, t.flags)?;
    let d = &mut r.event().data;
    d.family = 0;
    d.dport = 0;
    d.daddr = [0; 16];
    d._pad = 0;
    let o = &cfg.offsets;
    if let Some(a) = sock_of_fd(o, p.fd).and_then(|sk| sock_addrs(o, sk)) {
        d.family = a.family;
        d.dport = a.peer_port;
        d.daddr = a.peer;
    }
    let mut n = ret as u64;
    if n > DNS_CAP as u64 {
        n = DNS_CAP as u64;
        count(StatReason::Truncated);
    }
    // SAFETY: n <= DNS_CAP, the destination's size.
    let r2 = unsafe {
        read_user_raw(
            d.payload.as_mut_ptr() as *mut _,
            n as u32,
            p.buf as *const _,
        )
    };
    d.len = if r2 == 0 { n as u16 } else { 0 };
    r.submit();
    Some(())
}
