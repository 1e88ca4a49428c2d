use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
        bpf_probe_read_kernel,
        generated::{
            bpf_get_current_task_btf, bpf_probe_read_kernel_str, bpf_probe_read_user,
            bpf_task_pt_regs,
        },
    },
    maps::ring_buf::RingBufEntry,
    programs::TracePointContext,
};
use sensor_common::{
    ARGV_CAP, Config, Event, EventHeader, EventKind, KernelOffsets, OFFSET_MISSING, PATH_DEPTH,
    SYSCALL_TABLE, StatReason, Tracked, syscall, track,
};

use crate::maps::{
    CONFIG, EVENTS, PENDING_COUNT, PENDING_READ, PendingRead, RINGBUF_FILL, RUNTIME_EPOCH, STATS,
    SYSCALLS, TRACK_CACHE, TRACK_GEN, TRACKED, WATCH_FDS,
};

/// An event reserved in the ring buffer with its header filled. Every path must end in
/// [`Reserved::submit`]: the verifier refuses a reservation that is neither submitted nor
/// discarded.
pub struct Reserved<T: 'static>(RingBufEntry<Event<T>>);

impl<T> Reserved<T> {
    #[inline(always)]
    pub fn event(&mut self) -> &mut Event<T> {
        // SAFETY: the reservation is sized for `Event<T>`; the header is written by `reserve`
        // and the caller writes every data field (or bounds byte arrays by written lengths).
        unsafe { &mut *self.0.as_mut_ptr() }
    }

    #[inline(always)]
    pub fn submit(self) {
        self.0.submit(0);
    }
}

/// Reserve an event of `kind` and fill its header; a full ring buffer is counted.
#[inline(always)]
pub fn reserve<T>(kind: EventKind, track_flags: u32) -> Option<Reserved<T>> {
    let Some(entry) = EVENTS.reserve::<Event<T>>(0) else {
        count(StatReason::RingbufFull);
        return None;
    };
    let mut r = Reserved(entry);
    fill_header(&mut r.event().header, kind as u32, track_flags);
    Some(r)
}

/// A field of a classic tracepoint record, by a direct load from the context: the verifier
/// checks the constant, aligned offset, and no helper call is paid.
#[inline(always)]
pub fn tp_field<T: Copy>(ctx: &TracePointContext, off: usize) -> T {
    // SAFETY: `off` is a constant offset of a field of this tracepoint's record, aligned to
    // its size; tracepoint programs may read their context directly.
    unsafe { core::ptr::read((ctx.as_ptr() as *const u8).add(off) as *const T) }
}

/// Syscall argument `n` (0..6) from the `struct pt_regs` the raw `sys_enter` tracepoint passes,
/// at the offsets the loader resolved from BTF for this architecture.
#[inline(always)]
pub fn syscall_arg(o: &KernelOffsets, regs: u64, n: usize) -> u64 {
    read_at::<u64>(regs, o.regs_arg[n]).unwrap_or(0)
}

/// At most `cap` bytes of `len`, computed so that the verifier sees the bound on the register
/// that is used: an empty asm hides the value from the compiler, which could otherwise keep
/// an unbounded copy for the use and test another.
#[inline(always)]
pub fn bounded(len: u64, cap: u64) -> u64 {
    let mut v = len;
    // SAFETY: an empty instruction template; it only makes `v` opaque to the optimiser.
    unsafe { core::arch::asm!("/* {0} */", inout(reg) v) };
    if v > cap { cap } else { v }
}

/// Remember a watched syscall of the current thread until its `sys_exit`.
#[inline(always)]
pub fn pend(p: &PendingRead) {
    if PENDING_READ
        .insert(&bpf_get_current_pid_tgid(), p, 0)
        .is_err()
    {
        count(StatReason::ScratchMapFull);
        return;
    }
    pending_add(1);
}

/// Whether any watched syscall may be pending (an array load).
#[inline(always)]
pub fn any_pending() -> bool {
    PENDING_COUNT.get(0).is_some_and(|n| *n != 0)
}

/// The current thread's watched syscall, taken out of the map (at `sys_exit`).
#[inline(always)]
pub fn take_pending() -> Option<PendingRead> {
    let key = bpf_get_current_pid_tgid();
    // SAFETY: copied out at once.
    let p = unsafe { PENDING_READ.get(&key) }.copied()?;
    if PENDING_READ.remove(&key).is_ok() {
        pending_add(u64::MAX); // -1, wrapping
    }
    Some(p)
}

#[inline(always)]
fn pending_add(delta: u64) {
    if let Some(p) = PENDING_COUNT.get_ptr_mut(0) {
        atomic_add(p, delta);
    }
}

/// An atomic add to a map value shared by all CPUs. The BPF target has no
/// `AtomicU64::fetch_add` (no compare-and-swap); the intrinsic with its result unused is the
/// kernel's atomic add (BPF_XADD).
#[inline(always)]
fn atomic_add(p: *mut u64, delta: u64) {
    // SAFETY: `p` is a valid map value pointer, updated only atomically.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, delta,
        )
    };
}

/// `TRACKED` changed: every CPU's `TRACK_CACHE` entry is stale.
#[inline(always)]
pub fn tracked_changed() {
    if let Some(p) = TRACK_GEN.get_ptr_mut(0) {
        atomic_add(p, 1);
    }
}

/// The cache word: bits 0-31 tgid, 32-51 generation, 52-62 flags, 63 present.
const CACHE_GEN_MASK: u64 = 0xf_ffff;
const CACHE_FLAGS_SHIFT: u32 = 52;
const CACHE_FLAGS_MASK: u64 = 0x7ff;
const CACHE_PRESENT: u64 = 1 << 63;
// Every flag must fit the cache word.
const _: () = assert!((track::ACCEPTS as u64) <= CACHE_FLAGS_MASK);

/// Set `flag` on the current process's tracked entry.
#[inline(always)]
pub fn set_tracked_flag(flag: u32) {
    if let Some(t) = TRACKED.get_ptr_mut(&current_tgid()) {
        // SAFETY: a map value pointer; a racing update can only set the same bit.
        unsafe { (*t).flags |= flag };
        tracked_changed();
    }
}

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

/// `feature::IDLE` is set: the program leaves at once (see there). One inlined array lookup.
#[inline(always)]
pub fn idle() -> bool {
    config().is_some_and(|c| c.features & sensor_common::feature::IDLE != 0)
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

/// The tracked entry of the current process, if any (and never the sensor itself). Through the
/// per-CPU `TRACK_CACHE`: the returned `depth` is 0 (callers that need it read `TRACKED`).
#[inline(always)]
pub fn tracked_current(cfg: &Config) -> Option<(u32, Tracked)> {
    let (tgid, flags) = tracked_flags_current(cfg)?;
    // API clients are tracked only so that their exit is seen, not their activity.
    if flags & (track::RUNTIME | track::DESCENDANT) == 0 {
        return None;
    }
    Some((tgid, Tracked { flags, depth: 0 }))
}

/// The current process's `TRACKED` flags, whatever they are (API clients included), through
/// the per-CPU cache; `None` when it is not in the map (or is the sensor).
#[inline(always)]
pub fn tracked_flags_current(cfg: &Config) -> Option<(u32, u32)> {
    let (tgid, flags) = tracked_flags_lookup(cfg);
    Some((tgid, flags?))
}

/// The current process's tgid and, as [`tracked_flags_current`], its `TRACKED` flags.
#[inline(always)]
pub fn tracked_flags_lookup(cfg: &Config) -> (u32, Option<u32>) {
    let tgid = current_tgid();
    (tgid, tracked_flags_of(cfg, tgid))
}

#[inline(always)]
fn tracked_flags_of(cfg: &Config, tgid: u32) -> Option<u32> {
    if tgid == cfg.self_tgid {
        return None;
    }
    let generation = *TRACK_GEN.get(0)? & CACHE_GEN_MASK;
    let slot = TRACK_CACHE.get_ptr_mut(0)?;
    // SAFETY: a per-CPU map value, read and written in one word each.
    let word = unsafe { *slot };
    let flags = if word as u32 == tgid && (word >> 32) & CACHE_GEN_MASK == generation {
        if word & CACHE_PRESENT == 0 {
            return None;
        }
        ((word >> CACHE_FLAGS_SHIFT) & CACHE_FLAGS_MASK) as u32
    } else {
        // SAFETY: the value is copied out at once.
        let t = unsafe { TRACKED.get(&tgid) }.copied();
        let cached = match t {
            Some(t) => {
                CACHE_PRESENT | ((u64::from(t.flags) & CACHE_FLAGS_MASK) << CACHE_FLAGS_SHIFT)
            }
            None => 0,
        };
        // SAFETY: as above.
        unsafe { *slot = u64::from(tgid) | (generation << 32) | cached };
        t?.flags
    };
    Some(flags)
}

/// `WATCH_FDS`: mark fd `fd` of the current process as `what`, on socket `sk` (0: unknown).
#[inline(always)]
pub fn watch_set(fd: u64, what: u32, sk: u64) {
    let _ = WATCH_FDS.insert(&fd_key(fd), &((sk & !7) | u64::from(what & 7)), 0);
}

/// What fd `fd` of the current process is watched as, when it still is the socket `sk` that
/// was watched (`sk` 0, or an entry without a socket: not checked). A stale entry is removed.
#[inline(always)]
pub fn watch_get(fd: u64, sk: u64) -> Option<u32> {
    let key = fd_key(fd);
    // SAFETY: copied out at once.
    let v = unsafe { WATCH_FDS.get(&key) }.copied()?;
    let watched_sk = v & !7;
    if sk != 0 && watched_sk != 0 && watched_sk != sk & !7 {
        let _ = WATCH_FDS.remove(&key);
        return None;
    }
    Some((v & 7) as u32)
}

/// Forget fd `fd` of the current process in `WATCH_FDS`.
#[inline(always)]
pub fn watch_clear(fd: u64) {
    let key = fd_key(fd);
    // SAFETY: presence check only.
    if unsafe { WATCH_FDS.get(&key) }.is_some() {
        let _ = WATCH_FDS.remove(&key);
    }
}

/// The syscall the current task is in, as the socket hooks see it: its code in `SYSCALLS` and
/// the user registers saved at its entry (`bpf_task_pt_regs`), its arguments read on demand.
pub struct Call {
    pub code: u8,
    regs: u64,
}

impl Call {
    /// Syscall argument `n` (0..6).
    #[inline(always)]
    pub fn arg(&self, o: &KernelOffsets, n: usize) -> u64 {
        syscall_arg(o, self.regs, n)
    }
}

#[inline(always)]
pub fn current_call(o: &KernelOffsets) -> Option<Call> {
    // SAFETY: helpers without preconditions; the task pointer is the verifier-checked current
    // task, as bpf_task_pt_regs requires.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    let nr: u64 = read_at(regs, o.regs_nr)?;
    if nr >= SYSCALL_TABLE as u64 {
        return None;
    }
    let code = *SYSCALLS.get(nr as u32)?;
    if code == syscall::IGNORED {
        return None;
    }
    Some(Call { code, regs })
}

/// A runtime root exec'd: addresses checked before may now be its API socket's.
#[inline(always)]
pub fn runtime_epoch_bump() {
    if let Some(p) = RUNTIME_EPOCH.get_ptr_mut(0) {
        atomic_add(p, 1);
    }
}

#[inline(always)]
pub fn runtime_epoch() -> u64 {
    RUNTIME_EPOCH.get(0).copied().unwrap_or(0)
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
    tracked_changed();
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

/// What the out-of-line readers below return, packed in a `u32`: an `Option<(u16, bool)>`
/// return of a non-inlined function gives BTF that the kernel refuses (a niche-packed union
/// member at a bit offset). `NONE`, or the byte count with `INCOMPLETE` set when cut short.
pub const NONE: u32 = u32::MAX;
pub const INCOMPLETE: u32 = 1 << 16;

/// Unpack a reader's result: (bytes, complete).
#[inline(always)]
pub fn unpack(v: u32) -> Option<(u16, bool)> {
    (v != NONE).then_some((v as u16, v & INCOMPLETE == 0))
}

#[inline(always)]
fn pack(r: Option<(u16, bool)>) -> u32 {
    match r {
        Some((n, complete)) => n as u32 | if complete { 0 } else { INCOMPLETE },
        None => NONE,
    }
}

/// Copy a task's argv (the NUL-separated area between mm->arg_start and arg_end) into `out`;
/// returns the bytes copied and whether all of it fit (packed, see [`unpack`]).
#[inline(never)]
pub fn read_argv(task: u64, o: &KernelOffsets, out: &mut [u8; ARGV_CAP]) -> u32 {
    pack(read_argv_inner(task, o, out))
}

#[inline(always)]
fn read_argv_inner(task: u64, o: &KernelOffsets, out: &mut [u8; ARGV_CAP]) -> Option<(u16, bool)> {
    let mm: u64 = read_at(task, o.task_mm)?;
    let start: u64 = read_at(mm, o.mm_arg_start)?;
    let end: u64 = read_at(mm, o.mm_arg_end)?;
    if end <= start {
        return None;
    }
    let mut n = end - start;
    let mut cut = false;
    if n > ARGV_CAP as u64 {
        n = ARGV_CAP as u64;
        cut = true;
        count(StatReason::Truncated);
    }
    // SAFETY: n <= ARGV_CAP, the destination's size.
    let r = unsafe { bpf_probe_read_user(out.as_mut_ptr() as *mut _, n as u32, start as *const _) };
    if r != 0 {
        return None;
    }
    Some((n as u16, !cut))
}

/// Append the kernel string at `src` to `buf` at `off` (NUL included, as a separator); the
/// buffer is `2 * cap` bytes so that a copy of up to `cap` from any offset below `cap` is in
/// bounds. Returns the new offset, or `None` when the string did not fit or was unreadable.
#[inline(always)]
fn push_component(buf: *mut u8, cap: usize, off: usize, src: u64) -> Option<usize> {
    if off >= cap || src == 0 {
        return None;
    }
    // SAFETY: off < cap and at most cap bytes are written, inside the 2 * cap buffer.
    let r = unsafe {
        bpf_probe_read_kernel_str(
            buf.add(off & (cap - 1)) as *mut _,
            cap as u32,
            src as *const _,
        )
    };
    if r <= 0 {
        return None;
    }
    Some(off + r as usize)
}

/// The path of a task's executable, as NUL-separated components leaf first, walking
/// `mm->exe_file`'s dentries up and across mounts to the root of the task's mount namespace
/// (`bpf_d_path` is not allowed in tracepoints). Returns (bytes, complete), packed.
#[inline(never)]
pub fn exe_components(task: u64, o: &KernelOffsets, buf: *mut u8, cap: usize) -> u32 {
    pack(exe_inner(task, o, buf, cap))
}

#[inline(always)]
fn exe_inner(task: u64, o: &KernelOffsets, buf: *mut u8, cap: usize) -> Option<(u16, bool)> {
    let mm: u64 = read_at(task, o.task_mm)?;
    let file: u64 = read_at(mm, o.mm_exe_file)?;
    let mut dentry: u64 = read_at(file, o.file_path_dentry)?;
    let mut vfsmnt: u64 = read_at(file, o.file_path_mnt)?;
    if o.mount_mnt == OFFSET_MISSING || vfsmnt == 0 {
        return None;
    }
    let mut mnt = vfsmnt - o.mount_mnt as u64;
    let mut off = 0usize;
    for _ in 0..PATH_DEPTH {
        let root: u64 = read_at(vfsmnt, o.vfsmount_root)?;
        if dentry == root {
            // The top of this mount: continue from where it is mounted, or stop at the root.
            let parent: u64 = read_at(mnt, o.mount_parent)?;
            if parent == mnt || parent == 0 {
                return Some((off as u16, true));
            }
            dentry = read_at(mnt, o.mount_mountpoint)?;
            mnt = parent;
            vfsmnt = mnt + o.mount_mnt as u64;
            continue;
        }
        let parent: u64 = read_at(dentry, o.dentry_parent)?;
        if parent == dentry {
            return Some((off as u16, true));
        }
        let name: u64 = read_at(dentry, o.dentry_name)?;
        off = match push_component(buf, cap, off, name) {
            Some(n) => n,
            None => return Some((off as u16, false)),
        };
        dentry = parent;
    }
    Some((off as u16, false))
}

/// The cgroup path of a task (memory controller, else the v2 hierarchy), as NUL-separated
/// kernfs node names leaf first. Returns (bytes, complete), packed.
#[inline(never)]
pub fn cgroup_components(task: u64, o: &KernelOffsets, buf: *mut u8, cap: usize) -> u32 {
    pack(cgroup_inner(task, o, buf, cap))
}

#[inline(always)]
fn cgroup_inner(task: u64, o: &KernelOffsets, buf: *mut u8, cap: usize) -> Option<(u16, bool)> {
    let cset: u64 = read_at(task, o.task_cgroups)?;
    let mut cgrp: u64 = read_at(cset, o.css_set_cgroup)?;
    if o.css_set_is_css != 0 {
        cgrp = read_at(cgrp, o.css_cgroup)?;
    }
    let mut kn: u64 = read_at(cgrp, o.cgroup_kn)?;
    let mut off = 0usize;
    for _ in 0..PATH_DEPTH {
        let parent: u64 = read_at(kn, o.kn_parent)?;
        if parent == 0 {
            return Some((off as u16, true)); // the hierarchy's root
        }
        let name: u64 = read_at(kn, o.kn_name)?;
        off = match push_component(buf, cap, off, name) {
            Some(n) => n,
            None => return Some((off as u16, false)),
        };
        kn = parent;
    }
    Some((off as u16, false))
}
