use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use sensor_common::{
    COMM_LEN, Config, EventHeader, RuntimeName, STAT_REASONS, SYSCALL_TABLE, Tracked,
    UNIX_HEAD_LEN, UnixPathKey,
};

/// The one ring buffer every event goes through. Its size can be changed by the loader.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Highest number of bytes waiting in `EVENTS` seen when an event was produced (per CPU):
/// the ring buffer's real peak fill, for `sensor_stats.ringbuf.max_pending_bytes`.
#[map]
pub static RINGBUF_FILL: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Written once by the loader.
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Per-CPU counters, indexed by `StatReason`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_REASONS as u32, 0);

/// Processes (by tgid) in a tracked runtime tree. A plain hash (not LRU) so that a runtime is
/// never evicted silently; a full map is counted as `TrackedMapFull`.
#[map]
pub static TRACKED: HashMap<u32, Tracked> = HashMap::with_max_entries(65536, 0);

/// Bumped (atomically) after every change of `TRACKED` (kernel or loader): a `TRACK_CACHE`
/// entry taken under another generation is stale.
#[map]
pub static TRACK_GEN: Array<u64> = Array::with_max_entries(1, 0);

/// Per CPU, the last `TRACKED` lookup, packed in one word so that it is written in one store
/// (a program preempted mid-update cannot leave a mixed entry): bits 0-31 tgid, 32-51 the
/// generation (low 20 bits of `TRACK_GEN`), 52-62 the tracked flags, 63 set when the process is
/// tracked. A storm of syscalls from one process (a database, `dd`) then costs array loads, not
/// a hash lookup each (measured: the hash lookup was most of the untracked cost).
#[map]
pub static TRACK_CACHE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Names (comm, NUL padded) that make a process a tracked runtime root at exec.
#[map]
pub static RUNTIME_NAMES: HashMap<[u8; COMM_LEN], RuntimeName> = HashMap::with_max_entries(64, 0);

/// Unix socket paths of runtime APIs: an untracked process connecting to one is reported.
#[map]
pub static RUNTIME_SOCKETS: HashMap<UnixPathKey, u32> = HashMap::with_max_entries(32, 0);

/// The first `UNIX_HEAD_LEN - 1` bytes of each `RUNTIME_SOCKETS` path (NUL padded): what
/// `connect_unix` checks an untracked process's connect against before reading the whole path.
#[map]
pub static RUNTIME_SOCKET_HEADS: HashMap<[u8; UNIX_HEAD_LEN], u8> =
    HashMap::with_max_entries(32, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingConnect {
    pub header: EventHeader,
}

/// TCP connects in SYN_SENT, keyed by the socket's address, waiting for their outcome (which is
/// seen in softirq context, where the current task is unrelated).
#[map]
pub static PENDING_CONNECT: LruHashMap<u64, PendingConnect> =
    LruHashMap::with_max_entries(16384, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingRead {
    pub fd: u64,
    pub buf: u64,
    /// `READ_*` or `WRITE_API`.
    pub kind: u64,
}

pub const READ_API: u64 = 1;
pub const READ_DNS: u64 = 2;
/// accept(2)/accept4(2) by a tracked process: the new fd is the return value.
pub const READ_ACCEPT: u64 = 3;
/// open(2)/openat(2) of a build file for writing: the new fd is watched.
pub const READ_OPEN_WATCHED: u64 = 4;
/// write(2) of an API server's uprobed binary on a watched API connection: the bytes written
/// (the return value) are the response's (`goapi.rs`).
pub const WRITE_API: u64 = 5;

/// API server processes whose Engine API traffic the uprobes in them take (`goapi.rs`), by tgid;
/// userspace adds each after attaching its uprobes and removes it at its exit.
#[map]
pub static UPROBED: HashMap<u32, u32> = HashMap::with_max_entries(1024, 0);

/// Syscalls being watched between the raw `sys_enter` and `sys_exit` (API servers' reads, DNS
/// responses, accepts), keyed by pid_tgid.
#[map]
pub static PENDING_READ: LruHashMap<u64, PendingRead> = LruHashMap::with_max_entries(8192, 0);

/// How many `PENDING_READ` entries may exist (never less than the real number: an LRU eviction
/// leaves it higher). `sys_exit` runs on every syscall of every process; while this is 0 it
/// leaves without a hash lookup.
#[map]
pub static PENDING_COUNT: Array<u64> = Array::with_max_entries(1, 0);

/// What each syscall number means to the raw `sys_enter` dispatch (`sensor_common::syscall`),
/// written by the loader from its own syscall numbers.
#[map]
pub static SYSCALLS: Array<u8> = Array::with_max_entries(SYSCALL_TABLE as u32, 0);

/// Scratch space for a unix socket path key (too big for the 512-byte stack with the rest).
#[map]
pub static SCRATCH_PATH: PerCpuArray<UnixPathKey> = PerCpuArray::with_max_entries(1, 0);

/// The byte of a one-byte read by an API server, keyed by `tgid << 32 | fd`: Go's HTTP server
/// reads one byte between requests to notice a closed connection, so a request can arrive as
/// that byte, then the rest.
#[map]
pub static ONE_BYTE: LruHashMap<u64, u8> = LruHashMap::with_max_entries(4096, 0);

/// Watched fds (API connections whose responses are captured, DNS sockets, build files), keyed
/// by `tgid << 32 | fd`. Value: what (`WATCH_*`, low 3 bits) and the socket's address (the
/// rest; 0 when not known): the socket hooks see no close(2), so an entry whose socket is not
/// the one now behind the fd is stale (the fd was reused). Set when a watched request (POST
/// /build, push, container create) is read; cleared on the next request or close.
#[map]
pub static WATCH_FDS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

/// TCP listeners of tracked processes (socket hooks, which have no accept(2) hook), keyed by
/// [network namespace, local port], with the header of the process that listened: a passively
/// established connection to one is reported as its accept.
#[map]
pub static LISTENERS: LruHashMap<[u64; 2], PendingConnect> = LruHashMap::with_max_entries(4096, 0);

/// Unix sockets of tracked processes already reported as connected (socket hooks: the connect
/// is reported at the first send), keyed by the socket's address.
#[map]
pub static SEEN_UNIX: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16384, 0);

/// The unix socket this CPU last found in or added to `SEEN_UNIX`: a tracked process's sends
/// on one socket, one after another (a socketpair's traffic), skip the hash lookup.
#[map]
pub static LAST_SEEN_UNIX: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Listener addresses (`struct unix_address *`) known not to be a runtime's API socket, with
/// the `RUNTIME_EPOCH` they were checked under: an untracked process's sends on a named unix
/// socket then cost one lookup, not a path read.
#[map]
pub static NOT_RUNTIME_ADDR: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

/// Bumped when a runtime root execs (it may bind its API socket at an address freed by
/// another socket): older `NOT_RUNTIME_ADDR` entries no longer count.
#[map]
pub static RUNTIME_EPOCH: Array<u64> = Array::with_max_entries(1, 0);

/// sendmmsg(2) messages seen so far in the current call, per thread: the `sock_send_length`
/// tracepoint fires once per message with no index. Value: [vector address, index].
#[map]
pub static MMSG_INDEX: LruHashMap<u64, [u64; 2]> = LruHashMap::with_max_entries(4096, 0);

/// UDP sockets a tracked process sent a DNS query from (`dns_skb`), keyed by socket cookie
/// (never reused while the system runs), with that process's header: the response arrives in
/// softirq, where the current task is unrelated, so its record names the process that asked.
#[map]
pub static DNS_QUERIERS: LruHashMap<u64, PendingConnect> = LruHashMap::with_max_entries(4096, 0);
