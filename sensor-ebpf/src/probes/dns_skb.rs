//! DNS from the packets (`--kernel-hooks narrow`): two `cgroup_skb` programs, attached at the
//! cgroup v2 root so that every local inet socket's packets pass them, take the queries tracked
//! processes send and the responses that come back, in place of the socket tracepoints (which
//! fire on every socket send and receive of every process on the node).
//!
//! - Egress of a local UDP send runs in the sender's context (inside `sendmsg`, before
//!   fragmentation and the qdisc), so the current task is the process that asked, whatever
//!   the resolver's calls were: connect+write (glibc), sendto (musl), write on a connected
//!   socket (Go), sendmmsg. The query is reported and the socket remembered by its cookie
//!   (`DNS_QUERIERS`) with the asking process's header.
//! - Ingress runs where the socket receives the datagram (usually softirq, the current task
//!   unrelated): a datagram from port 53 to a remembered socket is the response, reported for
//!   the process that sent the query on it.
//!
//! Both run for every inet packet of every process: a packet that is not UDP leaves after a
//! few direct loads (no helper call, no map), one that is not to or from port 53 after one
//! `bpf_skb_load_bytes`. Both always return 1: they observe, never drop.
//!
//! Not seen: a query sent with sendto on an unconnected socket whose port 53 netfilter
//! rewrote on the way out (docker's embedded DNS at 127.0.0.11 does, for musl's resolver):
//! egress sees the packet after NAT, and such a socket has no peer to tell the original.
use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_get_socket_cookie,
    helpers::generated::bpf_skb_load_bytes, macros::cgroup_skb, programs::SkBuffContext,
};
use sensor_common::{AF_INET, AF_INET6, EventKind, StatReason};

use super::{
    dns::{DNS_HEADER, response_len},
    net::dns_record,
};
use crate::{
    helpers::{config, count, fill_header, tracked_current},
    maps::{DNS_QUERIERS, PendingConnect},
};

/// What a cgroup_skb program returns to let the packet pass.
const PASS: i32 = 1;
const IPPROTO_UDP: u8 = 17;
const DNS_PORT: u16 = 53;
const UDP_HEADER: u32 = 8;

#[cgroup_skb(egress)]
pub fn dns_skb_egress(ctx: SkBuffContext) -> i32 {
    let _ = try_egress(&ctx);
    PASS
}

#[cgroup_skb(ingress)]
pub fn dns_skb_ingress(ctx: SkBuffContext) -> i32 {
    let _ = try_ingress(&ctx);
    PASS
}

/// A UDP datagram to or from port 53, as the packet says: the socket's peer is not enough
/// (an unconnected resolver's socket has none).
struct Datagram {
    /// AF_INET or AF_INET6 (of the packet: a v4-mapped send on an AF_INET6 socket is IPv4).
    family: u16,
    /// Where the UDP header starts.
    l4: u32,
    src_port: u16,
    dst_port: u16,
}

/// The packet as a UDP datagram (IPv4, or IPv6 without extension headers), from the IP header
/// the program sees first. The protocol is read by direct loads from the linear head: every
/// TCP packet on the node (a loopback benchmark's) leaves here without a helper call.
#[inline(always)]
fn udp(ctx: &SkBuffContext) -> Option<Datagram> {
    // SAFETY: the context's `data`/`data_end`, which the verifier gives as packet pointers.
    let (data, end) = unsafe {
        (
            (*ctx.skb.skb).data as usize,
            (*ctx.skb.skb).data_end as usize,
        )
    };
    if data + 20 > end {
        return None;
    }
    let p = data as *const u8;
    // SAFETY: the 20 bytes after `data` are in the packet (checked above).
    let (first, v4_proto, v6_next) = unsafe { (*p, *p.add(9), *p.add(6)) };
    let (family, l4) = match first >> 4 {
        4 if v4_proto == IPPROTO_UDP => (AF_INET, u32::from(first & 0xf) * 4),
        6 if v6_next == IPPROTO_UDP => (AF_INET6, 40),
        _ => return None,
    };
    let ports: [u8; 4] = ctx.load(l4 as usize).ok()?;
    Some(Datagram {
        family,
        l4,
        src_port: u16::from_be_bytes([ports[0], ports[1]]),
        dst_port: u16::from_be_bytes([ports[2], ports[3]]),
    })
}

/// The packet's source (`src`) or destination address, as the records hold it.
#[inline(always)]
fn addr(ctx: &SkBuffContext, family: u16, src: bool) -> [u8; 16] {
    let mut ip = [0u8; 16];
    if family == AF_INET {
        if let Ok(v4) = ctx.load::<[u8; 4]>(if src { 12 } else { 16 }) {
            ip[..4].copy_from_slice(&v4);
        }
    } else if let Ok(v6) = ctx.load::<[u8; 16]>(if src { 8 } else { 24 }) {
        ip = v6;
    }
    ip
}

/// DNS over the packets is on: events wanted, the programs not idle.
#[inline(always)]
fn active() -> Option<&'static sensor_common::Config> {
    let cfg = config()?;
    let on = sensor_common::feature::DNS_EVENTS | sensor_common::feature::DNS_SKB;
    (cfg.features & (on | sensor_common::feature::IDLE) == on).then_some(cfg)
}

/// Where a query goes: the socket's peer when it is connected (glibc, Go), else the packet's
/// destination (musl's sendto). Egress runs after netfilter's OUTPUT and POSTROUTING, so the
/// packet carries a NATed destination (docker's embedded DNS redirects 127.0.0.11:53 to another
/// port; a Kubernetes service address becomes a pod's); the socket's peer is what the process
/// asked for, as the socket tracepoints saw it.
#[inline(always)]
fn destination(ctx: &SkBuffContext, dg: &Datagram) -> Option<(u16, [u8; 16])> {
    // `__sk_buff.remote_port`: the socket's `skc_dport`, in the upper half on little-endian.
    let raw = ctx.skb.remote_port();
    let peer = if cfg!(target_endian = "little") {
        (raw >> 16) as u16
    } else {
        raw as u16
    };
    let peer = u16::from_be(peer);
    if peer == 0 {
        return (dg.dst_port == DNS_PORT).then(|| (dg.dst_port, addr(ctx, dg.family, false)));
    }
    if peer != DNS_PORT {
        return None;
    }
    let mut ip = [0u8; 16];
    if dg.family == AF_INET {
        ip[..4].copy_from_slice(&ctx.skb.remote_ipv4().to_ne_bytes());
    } else {
        // One 4-byte load per word: the verifier takes context fields only at their own size,
        // which two words merged into one load would not be.
        let words = unsafe { &(*ctx.skb.skb).remote_ip6 };
        for i in 0..4 {
            // SAFETY: a field of the program's context.
            let w = unsafe { core::ptr::read_volatile(&words[i]) };
            ip[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
    }
    Some((peer, ip))
}

#[inline(always)]
fn try_egress(ctx: &SkBuffContext) -> Option<()> {
    let dg = udp(ctx)?;
    let (port, ip) = destination(ctx, &dg)?;
    let cfg = active()?;
    let (_, t) = tracked_current(cfg)?;
    // SAFETY: the program's context, as the helper takes it (its socket is set here).
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let mut asker = PendingConnect {
        // SAFETY: all-zero is a valid header; every field is written by fill_header.
        header: unsafe { core::mem::zeroed() },
    };
    fill_header(&mut asker.header, EventKind::DnsResponse as u32, t.flags);
    if DNS_QUERIERS.insert(&cookie, &asker, 0).is_err() {
        count(StatReason::ScratchMapFull);
    }
    let mut r = dns_record(EventKind::DnsSend, t.flags, dg.family, port, ip)?;
    let off = dg.l4 + UDP_HEADER;
    let len = u64::from(ctx.len().saturating_sub(off));
    // Queries are not counted as truncated when longer (as at the socket tracepoints).
    let n = crate::helpers::bounded(len, sensor_common::DNS_CAP as u64);
    copy_payload(ctx, off, &mut r.event().data, n);
    r.submit();
    Some(())
}

#[inline(always)]
fn try_ingress(ctx: &SkBuffContext) -> Option<()> {
    let dg = udp(ctx)?;
    if dg.src_port != DNS_PORT {
        return None;
    }
    active()?;
    // SAFETY: as in try_egress.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: copied out at once.
    let asker = unsafe { DNS_QUERIERS.get(&cookie) }.copied()?;
    let off = dg.l4 + UDP_HEADER;
    let len = u64::from(ctx.len().saturating_sub(off));
    if len < DNS_HEADER {
        return None;
    }
    let n = response_len(len);
    let ip = addr(ctx, dg.family, true);
    let flags = asker.header.track_flags;
    let mut r = dns_record(EventKind::DnsResponse, flags, dg.family, dg.src_port, ip)?;
    let ev = r.event();
    // Who asked, from the query; the time is the response's (set by reserve).
    let now = ev.header.ts_ns;
    ev.header = asker.header;
    ev.header.ts_ns = now;
    copy_payload(ctx, off, &mut ev.data, n);
    r.submit();
    Some(())
}

/// Copy `n` (at most DNS_CAP) bytes of the packet from `off` into the record's payload;
/// `len` 0 when they cannot be read.
#[inline(always)]
fn copy_payload(ctx: &SkBuffContext, off: u32, d: &mut sensor_common::DnsData, n: u64) {
    if n == 0 {
        return;
    }
    // SAFETY: 0 < n <= DNS_CAP, the destination's size; the helper checks the packet's bounds.
    let r = unsafe {
        bpf_skb_load_bytes(
            ctx.as_ptr(),
            off,
            d.payload.as_mut_ptr() as *mut _,
            n as u32,
        )
    };
    d.len = if r == 0 { n as u16 } else { 0 };
}
