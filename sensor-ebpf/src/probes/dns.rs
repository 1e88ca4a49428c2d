//! DNS responses: what a tracked process reads back from a socket it sent a query to port 53
//! on (marked in `WATCH_FDS` by the query). With the queries (`net.rs`), they let userspace name
//! the addresses a build step connects to.
use aya_ebpf::helpers::{bpf_probe_read_user, generated::bpf_probe_read_user as read_user_raw};
use sensor_common::{Config, DNS_CAP, EventKind, StatReason, Tracked, track};

use super::net::{WATCH_DNS, dns_record};
use crate::{
    helpers::{count, pend, sock_addrs, sock_of_fd, watch_get, watch_set},
    maps::{PendingRead, READ_DNS},
};

/// Mark `fd` (socket `sk`, 0 when not known) of the current process as a DNS socket: its
/// reads are responses.
#[inline(always)]
pub fn watch_dns_fd(fd: u64, sk: u64) {
    watch_set(fd, WATCH_DNS, sk);
    crate::helpers::set_tracked_flag(track::DNS_SOCKETS);
}

/// At a read-like syscall's entry: remember the buffer when `fd` is a watched DNS socket.
#[inline(always)]
pub fn enter_read(fd: u64, buf: u64) -> bool {
    if watch_get(fd, 0) != Some(WATCH_DNS) {
        return false;
    }
    pend(&PendingRead {
        fd,
        buf,
        kind: READ_DNS,
    });
    true
}

/// recvmsg(2) entry: the first buffer of its `struct msghdr`.
#[inline(always)]
pub fn enter_recvmsg(fd: u64, msg: u64) -> Option<()> {
    let base = msghdr_buf(msg)?.0;
    if base != 0 {
        enter_read(fd, base);
    }
    Some(())
}

/// The first buffer of a user `struct msghdr` (msg_iov at 16; `struct iovec`: base 0, len 8):
/// (base, len).
#[inline(always)]
pub fn msghdr_buf(msg: u64) -> Option<(u64, u64)> {
    // SAFETY (all reads): bpf_probe_read_user checks the address.
    let iov: u64 = unsafe { bpf_probe_read_user((msg + 16) as *const u64) }.ok()?;
    let base: u64 = unsafe { bpf_probe_read_user(iov as *const u64) }.ok()?;
    let len: u64 = unsafe { bpf_probe_read_user((iov + 8) as *const u64) }.ok()?;
    Some((base, len))
}

/// At the exit: the response that was read, with the server it came from.
#[inline(always)]
pub fn exit_read(cfg: &Config, t: &Tracked, p: &PendingRead, ret: i64) -> Option<()> {
    let sk = sock_of_fd(&cfg.offsets, p.fd);
    response(cfg, t, sk, p.buf, ret)
}

/// A DNS message's fixed header: anything shorter is no response.
pub const DNS_HEADER: u64 = 12;

/// The bytes of a `len`-byte response that are captured (at most `DNS_CAP`; a longer one is
/// counted as truncated).
#[inline(always)]
pub fn response_len(len: u64) -> u64 {
    if len > DNS_CAP as u64 {
        count(StatReason::Truncated);
    }
    crate::helpers::bounded(len, DNS_CAP as u64)
}

/// `ret` bytes of a DNS response read into `buf` from socket `sk`.
#[inline(always)]
pub fn response(cfg: &Config, t: &Tracked, sk: Option<u64>, buf: u64, ret: i64) -> Option<()> {
    if ret < DNS_HEADER as i64 {
        return None; // shorter than a DNS header, or an error
    }
    let (family, port, ip) = sk
        .and_then(|sk| sock_addrs(&cfg.offsets, sk))
        .map_or((0, 0, [0; 16]), |a| (a.family, a.peer_port, a.peer));
    let mut r = dns_record(EventKind::DnsResponse, t.flags, family, port, ip)?;
    let d = &mut r.event().data;
    let n = response_len(ret as u64);
    // SAFETY: n <= DNS_CAP, the destination's size.
    let r2 = unsafe { read_user_raw(d.payload.as_mut_ptr() as *mut _, n as u32, buf as *const _) };
    d.len = if r2 == 0 { n as u16 } else { 0 };
    r.submit();
    Some(())
}
