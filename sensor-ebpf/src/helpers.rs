use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
    bpf_get_current_task, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
};
use sensor_common::{
    Config, EventHeader, KernelOffsets, OFFSET_MISSING, StatReason, Tracked, track,
};

use crate::maps::{CONFIG, EVENTS, RINGBUF_FILL, STATS, TRACKED};

#[inline(always)]
pub fn count(reason: StatReason) {
    if let Some(p) = STATS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

/// Key of the current process's file descriptor `fd` in the per-connection maps
/// (`WATCH_FDS`, `ONE_BYTE`): `tgid << 32 | fd`.
#[inline(always)]
pub fn fd_key(fd: u64) -> u64 {
    (bpf_get_current_pid_tgid() & 0xffff_ffff_0000_0000) | (fd & 0xffff_ffff)
}

#[inline(always)]
pub fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// The tracked entry of the current process, if any (and never the sensor itself).
#[inline(always)]
pub fn tracked_current(cfg: &Config) -> Option<(u32, Tracked)> {
    let tgid = current_tgid();
    if tgid == cfg.self_tgid {
        return None;
    }
    // SAFETY: the value is copied out at once.
    let t = unsafe { TRACKED.get(&tgid) }.copied()?;
    // API clients are tracked only so that their exit is seen, not their activity.
    if t.flags & (track::RUNTIME | track::DESCENDANT) == 0 {
        return None;
    }
    Some((tgid, t))
}

#[inline(always)]
pub fn fill_header(h: &mut EventHeader, kind: u32, track_flags: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    h.kind = kind;
    h.track_flags = track_flags;
    // SAFETY: helpers without preconditions.
    h.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    h.pid = (pid_tgid >> 32) as u32;
    h.tid = pid_tgid as u32;
    h.uid = uid_gid as u32;
    h.gid = (uid_gid >> 32) as u32;
    h.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    h.comm = bpf_get_current_comm().unwrap_or([0u8; 16]);
    // BPF_RB_AVAIL_DATA: bytes produced and not yet consumed.
    let pending = EVENTS.query(0);
    if let Some(p) = RINGBUF_FILL.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            if pending > *p {
                *p = pending;
            }
        }
    }
}

/// Read a kernel value at `base + off`; `None` when the offset is unknown or the read fails.
#[inline(always)]
pub fn read_at<T: Copy>(base: u64, off: u32) -> Option<T> {
    if base == 0 || off == OFFSET_MISSING {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.ok()
}

#[inline(always)]
pub fn current_task() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_get_current_task() }
}

/// Mark `tgid` tracked with `flags`; counts a full map.
#[inline(always)]
pub fn track(tgid: u32, flags: u32, depth: u32) {
    let v = Tracked { flags, depth };
    if TRACKED.insert(&tgid, &v, 0).is_err() {
        count(StatReason::TrackedMapFull);
    }
}

/// The socket (`struct sock *`) behind file descriptor `fd` of the current task.
#[inline(always)]
pub fn sock_of_fd(o: &KernelOffsets, fd: u64) -> Option<u64> {
    let task = current_task();
    let files: u64 = read_at(task, o.task_files)?;
    let fdt: u64 = read_at(files, o.files_fdt)?;
    let max_fds: u32 = read_at(fdt, o.fdt_max_fds)?;
    if fd >= max_fds as u64 {
        return None;
    }
    let fd_array: u64 = read_at(fdt, o.fdt_fd)?;
    let file: u64 = read_at(fd_array, (fd * 8) as u32)?;
    let socket: u64 = read_at(file, o.file_private_data)?;
    let sk: u64 = read_at(socket, o.socket_sk)?;
    if sk == 0 { None } else { Some(sk) }
}

/// Address data of a socket: family, local and peer addresses and ports (host order ports).
pub struct SockAddrs {
    pub family: u16,
    pub local_port: u16,
    pub peer_port: u16,
    pub local: [u8; 16],
    pub peer: [u8; 16],
}

#[inline(always)]
pub fn sock_addrs(o: &KernelOffsets, sk: u64) -> Option<SockAddrs> {
    let family: u16 = read_at(sk, o.sk_family)?;
    let mut a = SockAddrs {
        family,
        local_port: 0,
        peer_port: 0,
        local: [0; 16],
        peer: [0; 16],
    };
    if family == sensor_common::AF_INET || family == sensor_common::AF_INET6 {
        let dport: u16 = read_at(sk, o.sk_dport).unwrap_or(0);
        a.peer_port = u16::from_be(dport);
        a.local_port = read_at(sk, o.sk_num).unwrap_or(0);
        if family == sensor_common::AF_INET {
            let d: [u8; 4] = read_at(sk, o.sk_daddr).unwrap_or([0; 4]);
            let s: [u8; 4] = read_at(sk, o.sk_rcv_saddr).unwrap_or([0; 4]);
            a.peer[..4].copy_from_slice(&d);
            a.local[..4].copy_from_slice(&s);
        } else {
            a.peer = read_at(sk, o.sk_v6_daddr).unwrap_or([0; 16]);
            a.local = read_at(sk, o.sk_v6_rcv_saddr).unwrap_or([0; 16]);
        }
    }
    Some(a)
}

/// Pid (in the initial pid namespace) and uid of a unix socket's peer, from `sk_peer_pid` and
/// `sk_peer_cred` (what SO_PEERCRED returns).
#[inline(always)]
pub fn unix_peer(o: &KernelOffsets, sk: u64) -> (u32, u32) {
    let pid = read_at::<u64>(sk, o.sk_peer_pid)
        .and_then(|p| read_at::<u32>(p, o.pid_first_nr))
        .unwrap_or(0);
    let uid = read_at::<u64>(sk, o.sk_peer_cred)
        .and_then(|c| read_at::<u32>(c, o.cred_uid))
        .unwrap_or(u32::MAX);
    (pid, uid)
}

#[inline(always)]
pub fn is_api_server(t: &Tracked) -> bool {
    t.flags & track::API_SERVER != 0
}
