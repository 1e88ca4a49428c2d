//! Wire types shared by the kernel programs (`sensor-ebpf`) and the userspace sensor.
//!
//! Every record the kernel submits to the ring buffer starts with an [`EventHeader`]; userspace
//! reads the header, then dispatches on [`EventKind`]. Numbers of `EventKind` are stable and
//! gapped: a new kind never renumbers an old one.
//!
//! All structs are `#[repr(C)]`, fixed-size and `Copy`, so that the kernel can reserve them in the
//! ring buffer and userspace can read them with an unaligned copy.
#![no_std]

/// Bytes of argv captured per exec (NUL-separated, as the kernel lays them out).
pub const ARGV_CAP: usize = 1024;
/// Bytes of a path captured (exec filename, written file, rename target).
pub const PATH_CAP: usize = 256;
/// Bytes of a unix-socket path (`sockaddr_un.sun_path`).
pub const UNIX_PATH_CAP: usize = 108;
/// Bytes of a DNS message (query or response) captured.
pub const DNS_CAP: usize = 512;
/// Bytes of the start of an HTTP request read by an Engine API server.
pub const HTTP_CAP: usize = 2048;
/// Bytes of an API client's executable path, captured as NUL-separated components leaf first
/// (the kernel program walks `mm->exe_file`'s dentries; userspace joins them). The buffer is
/// twice the logical size so that each component copy has a verifiable bound.
pub const EXE_CAP: usize = 256;
/// Bytes of an API client's cgroup path, captured like `EXE_CAP` (leaf first).
pub const CGROUP_CAP: usize = 128;
/// Path components walked (exe path, cgroup path).
pub const PATH_DEPTH: usize = 16;
/// Entries of the syscall dispatch table (`SYSCALLS`): syscall numbers at or above are ignored.
pub const SYSCALL_TABLE: usize = 512;
/// Process names held in the tracked-name map (the kernel's comm size).
pub const COMM_LEN: usize = 16;
/// Largest event the kernel submits; checked at compile time below.
pub const MAX_EVENT_SIZE: usize = 4096;

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Exec = 1,
    Fork = 2,
    Exit = 3,
    Connect = 10,
    Accept = 11,
    UnixConnect = 12,
    DnsSend = 13,
    /// A DNS response a tracked process read from a socket it sent a query on.
    DnsResponse = 14,
    FileWrite = 20,
    /// Bytes written to a watched build file (a Dockerfile being received by the daemon).
    FileContent = 21,
    ApiRequest = 30,
    /// The start of a write(2) an API server made on a connection that carried a watched request
    /// (POST /build, /images/{name}/push, /containers/create). Same layout as ApiRequest.
    ApiResponse = 31,
}

impl EventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Exec,
            2 => Self::Fork,
            3 => Self::Exit,
            10 => Self::Connect,
            11 => Self::Accept,
            12 => Self::UnixConnect,
            13 => Self::DnsSend,
            14 => Self::DnsResponse,
            20 => Self::FileWrite,
            21 => Self::FileContent,
            30 => Self::ApiRequest,
            31 => Self::ApiResponse,
            _ => return None,
        })
    }
}

/// Flags stored per tracked process (value of the `TRACKED` map) and copied into each header.
pub mod track {
    /// The process is a container runtime or builder named in the config (dockerd, runc ...).
    pub const RUNTIME: u32 = 1 << 0;
    /// The process serves the Engine API: its HTTP requests are captured.
    pub const API_SERVER: u32 = 1 << 1;
    /// The process descends from a runtime (a build step, a container process, a shim).
    pub const DESCENDANT: u32 = 1 << 2;
    /// The process is not tracked but talked to a runtime socket (an API client).
    pub const API_CLIENT: u32 = 1 << 3;
    /// Seeded from /proc at start rather than seen at exec/fork.
    pub const SEEDED: u32 = 1 << 4;
    /// The process sent a DNS query: its reads may be DNS responses (saves the others a lookup).
    pub const DNS_SOCKETS: u32 = 1 << 5;
    /// The process opened a build file (a Dockerfile) for writing: its writes on that fd are
    /// captured (dockerd writing a BuildKit context, the legacy builder's context extraction).
    pub const FILE_WATCH: u32 = 1 << 6;
    /// The process called accept(2): its syscall exits may carry an accepted fd.
    pub const ACCEPTS: u32 = 1 << 7;
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)
)]
pub struct EventHeader {
    pub kind: u32,
    /// Flags of the process in the tracked map (`track::*`).
    pub track_flags: u32,
    /// CLOCK_BOOTTIME nanoseconds (`bpf_ktime_get_boot_ns`).
    pub ts_ns: u64,
    /// Thread-group id (the pid users see).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

#[repr(C)]
#[derive(Clone, Copy)]
#[cfg_attr(feature = "user", derive(zerocopy::FromBytes, zerocopy::Immutable))]
pub struct Event<T> {
    pub header: EventHeader,
    pub data: T,
}

/// Process exec (`sched_process_exec`).
#[repr(C)]
#[derive(Clone, Copy)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)
)]
pub struct ExecData {
    pub ppid: u32,
    /// The pid before exec (differs when a non-leader thread called execve).
    pub old_pid: u32,
    /// Task start time, CLOCK_BOOTTIME ns (together with pid, a unique process key).
    pub start_time_ns: u64,
    pub filename_len: u16,
    pub argv_len: u16,
    /// Bit 0: filename truncated; bit 1: argv truncated; bit 2: argv unreadable.
    pub truncated: u16,
    pub _pad: u16,
    pub filename: [u8; PATH_CAP],
    pub argv: [u8; ARGV_CAP],
}

pub mod exec_flags {
    pub const FILENAME_TRUNCATED: u16 = 1;
    pub const ARGV_TRUNCATED: u16 = 2;
    pub const ARGV_UNREADABLE: u16 = 4;
}

/// New process (not a thread) forked by a tracked process.
#[repr(C)]
#[derive(Clone, Copy)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)
)]
pub struct ForkData {
    pub parent_pid: u32,
    pub child_pid: u32,
    pub child_start_time_ns: u64,
}

/// Process exit: last thread of the group.
#[repr(C)]
#[derive(Clone, Copy)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)
)]
pub struct ExitData {
    /// Raw `task->exit_code` (status << 8 | signal).
    pub exit_code: u32,
    pub _pad: u32,
    pub start_time_ns: u64,
}

/// Address family values, as in the kernel.
pub const AF_UNIX: u16 = 1;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// A TCP connect's outcome, or an accepted connection.
#[repr(C)]
#[derive(Clone, Copy)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)
)]
pub struct SockData {
    /// Boot ns when the connect started (SYN_SENT).
    pub start_ns: u64,
    pub family: u16,
    pub protocol: u16,
    /// Connect: 0 established, 1 failed (went from SYN_SENT to CLOSE).
    pub result: u16,
    pub sport: u16,
    pub dport: u16,
    pub _pad: [u16; 3],
    /// IPv4 in the first 4 bytes, or IPv6.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

pub mod connect_result {
    pub const ESTABLISHED: u16 = 0;
    pub const FAILED: u16 = 1;
}

#[repr(C)]
#[derive(Clone, Copy)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)
)]
pub struct UnixConnectData {
    pub path_len: u16,
    /// 1 when the address is in the abstract namespace (leading NUL).
    pub abstract_ns: u16,
    /// `client_flags::*`: whether the client identity below was captured, and what was cut.
    pub client: u16,
    pub _pad: u16,
    pub path: [u8; UNIX_PATH_CAP],
    /// The rest describes the connecting process, taken in the kernel at connect when it talks
    /// to a runtime's API socket (so that a client that exits at once is still known).
    pub ppid: u32,
    pub start_time_ns: u64,
    pub exe_len: u16,
    pub argv_len: u16,
    pub cgroup_len: u16,
    pub _pad2: u16,
    /// NUL-separated path components, leaf first; `exe_len` bytes are meaningful.
    pub exe: [u8; 2 * EXE_CAP],
    pub argv: [u8; ARGV_CAP],
    /// NUL-separated cgroup path components (memory controller, else the v2 hierarchy), leaf
    /// first.
    pub cgroup: [u8; 2 * CGROUP_CAP],
}

pub mod client_flags {
    /// The client identity fields were filled.
    pub const CAPTURED: u16 = 1;
    /// The exe path has more components than were walked, or did not fit.
    pub const EXE_TRUNCATED: u16 = 2;
    pub const ARGV_TRUNCATED: u16 = 4;
    /// The exe path could not be read (no mm, a kernel without the fields).
    pub const EXE_UNREADABLE: u16 = 8;
    /// The cgroup path has more components than were walked.
    pub const CGROUP_TRUNCATED: u16 = 16;
}

/// A UDP datagram sent to port 53, or (kind DnsResponse) one read back from that socket.
#[repr(C)]
#[derive(Clone, Copy)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)
)]
pub struct DnsData {
    pub family: u16,
    pub dport: u16,
    pub len: u16,
    pub _pad: u16,
    pub daddr: [u8; 16],
    pub payload: [u8; DNS_CAP],
}

pub mod file_op {
    /// open/openat/creat with O_WRONLY/O_RDWR/O_CREAT/O_TRUNC.
    pub const OPEN_WRITE: u16 = 1;
    /// rename/renameat/renameat2: `path` is the new name.
    pub const RENAME: u16 = 2;
}

#[repr(C)]
#[derive(Clone, Copy)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)
)]
pub struct FileData {
    pub op: u16,
    pub path_len: u16,
    pub truncated: u16,
    pub _pad: u16,
    pub flags: u32,
    /// Directory fd the path is relative to (AT_FDCWD = -100).
    pub dirfd: i32,
    pub path: [u8; PATH_CAP],
}

/// Chunks of a watched build file are this long; a write is captured up to
/// `FILE_CONTENT_CHUNKS` chunks.
pub const FILE_CONTENT_CAP: usize = 2048;
pub const FILE_CONTENT_CHUNKS: usize = 8;

/// One chunk of a write(2) to a watched build file.
#[repr(C)]
#[derive(Clone, Copy)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)
)]
pub struct FileContentData {
    pub fd: i32,
    /// Bytes of `data` that are meaningful.
    pub len: u16,
    /// Index of this chunk in the write (offset `chunk * FILE_CONTENT_CAP`).
    pub chunk: u16,
    /// Bytes the write(2) asked for in total.
    pub write_len: u32,
    pub _pad: u32,
    pub data: [u8; FILE_CONTENT_CAP],
}

/// The start of an HTTP request that an API server read from a connection.
#[repr(C)]
#[derive(Clone, Copy)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)
)]
pub struct ApiData {
    pub fd: i32,
    /// Family of the connection's socket (AF_UNIX, AF_INET, AF_INET6; 0 if unknown).
    pub peer_family: u16,
    pub peer_port: u16,
    /// For AF_UNIX: the peer's pid and uid from the socket's peer credentials (0/u32::MAX if none).
    pub peer_pid: u32,
    pub peer_uid: u32,
    pub local_port: u16,
    pub len: u16,
    /// Bytes returned by read(2) in total (the capture holds at most HTTP_CAP of them).
    pub read_len: u32,
    /// The request's first byte when an earlier one-byte read took it (Go's HTTP server reads
    /// one byte in the background between requests); 0 when `data` starts the request.
    pub prefix: u32,
    pub _pad2: u32,
    pub peer_addr: [u8; 16],
    pub local_addr: [u8; 16],
    pub data: [u8; HTTP_CAP],
}

/// Why a kernel record was dropped or cut short. Indexes the per-CPU `STATS` array. Its names
/// (`sensor_stats.drops`) are the variants', in snake case (userspace only).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(strum::EnumIter, strum::IntoStaticStr, strum::EnumCount),
    strum(serialize_all = "snake_case")
)]
pub enum StatReason {
    /// bpf_ringbuf_reserve failed: the ring buffer was full.
    RingbufFull = 0,
    /// The tracked-process map was full when a new process should have been tracked.
    TrackedMapFull = 1,
    /// argv could not be read.
    ArgvReadFailed = 2,
    /// A path could not be read from user memory.
    PathReadFailed = 3,
    /// An HTTP buffer could not be read.
    HttpReadFailed = 4,
    /// Pending read/connect scratch map full.
    ScratchMapFull = 5,
    /// A socket could not be resolved from an fd.
    SockLookupFailed = 6,
    /// Records truncated (argv, path, HTTP request beyond its cap).
    Truncated = 7,
    /// Kernel struct offsets missing: the probe is partially blind.
    OffsetsMissing = 8,
}

pub const STAT_REASONS: usize = 9;

#[cfg(feature = "user")]
impl StatReason {
    pub fn name(self) -> &'static str {
        self.into()
    }
}

// The kernel sizes `STATS` by the constant; userspace derives the count from the enum.
#[cfg(feature = "user")]
const _: () = assert!(<StatReason as strum::EnumCount>::COUNT == STAT_REASONS);

/// Offsets of kernel struct fields, resolved by userspace from the running kernel's BTF and
/// written to the `CONFIG` map. This makes field access relocatable across kernels without a C
/// toolchain: the same object runs on any kernel whose BTF has these fields. An offset of
/// `u32::MAX` means the field was not found; probes that need it count `OffsetsMissing`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KernelOffsets {
    pub task_tgid: u32,
    pub task_real_parent: u32,
    pub task_mm: u32,
    pub task_exit_code: u32,
    pub task_files: u32,
    pub task_start_boottime: u32,
    pub task_signal: u32,
    pub signal_live: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    pub sk_family: u32,
    pub sk_daddr: u32,
    pub sk_rcv_saddr: u32,
    pub sk_dport: u32,
    pub sk_num: u32,
    pub sk_v6_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
    pub sk_peer_pid: u32,
    pub sk_peer_cred: u32,
    pub pid_first_nr: u32,
    pub cred_uid: u32,
    pub sk_protocol: u32,
    /// Where the syscall arguments are in `struct pt_regs` (arch-specific: di, si, dx, r10, r8,
    /// r9 on x86_64; regs[0..5] on arm64), for the raw `sys_enter` dispatch.
    pub regs_arg: [u32; 6],
    pub mm_exe_file: u32,
    pub file_path_dentry: u32,
    pub file_path_mnt: u32,
    pub dentry_parent: u32,
    pub dentry_name: u32,
    pub vfsmount_root: u32,
    /// Offset of `struct vfsmount mnt` inside `struct mount` (the kernel's `real_mount`).
    pub mount_mnt: u32,
    pub mount_parent: u32,
    pub mount_mountpoint: u32,
    pub task_cgroups: u32,
    /// `css_set.subsys[memory_cgrp_id]` (or `dfl_cgrp` when there is no memory controller).
    pub css_set_cgroup: u32,
    /// 1 when `css_set_cgroup` points at a `cgroup_subsys_state` (then `css_cgroup` follows),
    /// 0 when it is `dfl_cgrp`, a `struct cgroup` itself.
    pub css_set_is_css: u32,
    pub css_cgroup: u32,
    pub cgroup_kn: u32,
    pub kn_name: u32,
    pub kn_parent: u32,
    /// The syscall number in `struct pt_regs` (`orig_ax` on x86_64, `syscallno` on arm64): the
    /// socket hooks read which syscall they run under from the task's saved registers.
    pub regs_nr: u32,
    /// `unix_sock.peer` and `unix_sock.addr` (a `struct unix_address *`, shared by a listener
    /// and the sockets it accepted), `unix_address.len` and `.name` (a `sockaddr_un`).
    pub unix_peer: u32,
    pub unix_addr: u32,
    pub unix_addr_len: u32,
    pub unix_addr_name: u32,
    /// `sock.__sk_common.skc_net.net`: a socket's network namespace (keys TCP listeners).
    pub sk_net: u32,
}

pub const OFFSET_MISSING: u32 = u32::MAX;

/// Written once by the loader into `CONFIG[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// The sensor's own tgid: never traced.
    pub self_tgid: u32,
    /// `feature::*` bits.
    pub features: u32,
    pub offsets: KernelOffsets,
}

pub mod feature {
    pub const FILE_EVENTS: u32 = 1 << 0;
    pub const NET_EVENTS: u32 = 1 << 1;
    pub const API_EVENTS: u32 = 1 << 2;
    pub const DNS_EVENTS: u32 = 1 << 3;
    /// Socket data is taken at the `sock_recv_length`/`sock_send_length` tracepoints (6.3+),
    /// not in the raw `sys_enter`/`sys_exit` dispatch, which (when attached at all, for file
    /// events) then leaves sockets alone.
    pub const SOCKET_HOOKS: u32 = 1 << 4;
    /// A bench instrument (`SENSOR_IDLE_PROBES=1`, `cargo xtask bench --floor`): every program
    /// stays attached but returns at its first check, so that what the attachment itself
    /// costs (the kernel's dispatch to a program) can be told from what the programs do.
    pub const IDLE: u32 = 1 << 5;
    /// Uprobes in API server processes take their Engine API traffic (`--kernel-hooks
    /// narrow`); the processes they are in are in `UPROBED`.
    pub const API_UPROBES: u32 = 1 << 6;
    /// Unix connects (and an API client's first request) are taken by the `cgroup/connect_unix`
    /// program (6.7+, `--kernel-hooks narrow`), so `sock_send_length` leaves unix sockets alone.
    pub const UNIX_CONNECT: u32 = 1 << 7;
    /// DNS queries and responses are taken from the packets, by the `cgroup_skb` programs at
    /// the cgroup v2 root (`--kernel-hooks narrow`, set only when both attached): the socket
    /// tracepoints and the syscall dispatch leave DNS alone.
    pub const DNS_SKB: u32 = 1 << 8;
}

/// Value of the `RUNTIME_NAMES` map (keyed by a NUL-padded comm).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RuntimeName {
    /// `track::*` flags given to a process with this name at exec.
    pub flags: u32,
}

/// Value of the `TRACKED` map (keyed by tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Tracked {
    pub flags: u32,
    /// Depth below the runtime root (0 for the runtime itself), saturating.
    pub depth: u32,
}

/// Key of the `RUNTIME_SOCKETS` map: a NUL-padded unix socket path.
pub type UnixPathKey = [u8; UNIX_PATH_CAP];

/// Key size of `RUNTIME_SOCKET_HEADS`: a runtime API socket's path's first `UNIX_HEAD_LEN - 1`
/// bytes, NUL padded (enough to tell `/var/run/docker.sock` from `/var/run/dbus/...`).
pub const UNIX_HEAD_LEN: usize = 16;

/// What a syscall number means to the raw `sys_enter`/`sys_exit` dispatch (value of the
/// `SYSCALLS` array, indexed by syscall number; 0 for every syscall the sensor ignores). The
/// loader fills it from the userspace build's syscall numbers, so the kernel object is the same
/// on every architecture.
pub mod syscall {
    pub const IGNORED: u8 = 0;
    pub const READ: u8 = 1;
    pub const WRITE: u8 = 2;
    pub const CLOSE: u8 = 3;
    pub const CONNECT: u8 = 4;
    pub const ACCEPT: u8 = 5;
    pub const ACCEPT4: u8 = 6;
    pub const SENDTO: u8 = 7;
    pub const SENDMSG: u8 = 8;
    pub const SENDMMSG: u8 = 9;
    pub const RECVFROM: u8 = 10;
    pub const RECVMSG: u8 = 11;
    pub const OPENAT: u8 = 12;
    pub const OPENAT2: u8 = 13;
    pub const OPEN: u8 = 14;
    pub const CREAT: u8 = 15;
    pub const RENAME: u8 = 16;
    pub const RENAMEAT: u8 = 17;
    pub const RENAMEAT2: u8 = 18;
}

// Exact sizes: the kernel and userspace builds must agree byte for byte, and no payload may
// carry implicit padding (a hole the probes never write would leak kernel stack bytes or read
// as garbage).
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<EventHeader>() == 56);
    assert!(size_of::<ExecData>() == 24 + PATH_CAP + ARGV_CAP);
    assert!(size_of::<ForkData>() == 16);
    assert!(size_of::<ExitData>() == 16);
    assert!(size_of::<SockData>() == 56);
    assert!(
        size_of::<UnixConnectData>()
            == 8 + UNIX_PATH_CAP + 4 + 8 + 8 + 2 * EXE_CAP + ARGV_CAP + 2 * CGROUP_CAP
    );
    assert!(size_of::<DnsData>() == 24 + DNS_CAP);
    assert!(size_of::<FileData>() == 16 + PATH_CAP);
    assert!(size_of::<ApiData>() == 64 + HTTP_CAP);
    assert!(size_of::<FileContentData>() == 16 + FILE_CONTENT_CAP);
    assert!(size_of::<Event<FileContentData>>() <= MAX_EVENT_SIZE);
    assert!(size_of::<Event<ExecData>>() <= MAX_EVENT_SIZE);
    assert!(size_of::<Event<ApiData>>() <= MAX_EVENT_SIZE);
    assert!(size_of::<Event<FileData>>() <= MAX_EVENT_SIZE);
    assert!(size_of::<Event<DnsData>>() <= MAX_EVENT_SIZE);
    assert!(size_of::<Event<UnixConnectData>>() <= MAX_EVENT_SIZE);
    assert!(HTTP_CAP.is_power_of_two() && ARGV_CAP.is_power_of_two() && PATH_CAP.is_power_of_two());
    assert!(EXE_CAP.is_power_of_two() && CGROUP_CAP.is_power_of_two() && DNS_CAP.is_power_of_two());
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are repr(C), Copy, made only of integers and byte arrays; every bit pattern is valid.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for RuntimeName {}
    unsafe impl aya::Pod for Tracked {}
}
