//! Loading the kernel programs: config map, tracked names and sockets, attach, seed from /proc.
use std::collections::{BTreeMap, HashMap, HashSet};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, TracePoint},
};
use sensor_common::{
    COMM_LEN, Config, RuntimeName, STAT_REASONS, StatReason, Tracked, UNIX_PATH_CAP, feature, track,
};
use thiserror::Error;

use crate::{btf, proc};

/// Names whose processes (and descendants) are tracked. `containerd-shim` covers every
/// `containerd-shim-*` (the kernel keeps 15 bytes of a name); `executor` is kaniko's.
pub const DEFAULT_RUNTIME_NAMES: &[&str] = &[
    "dockerd",
    "containerd",
    "containerd-shim",
    "runc",
    "crun",
    "buildkitd",
    "buildctl",
    "buildah",
    "podman",
    "conmon",
    "executor",
    "kaniko",
];
/// Runtimes that serve an HTTP Engine API whose requests are captured.
pub const DEFAULT_API_SERVERS: &[&str] = &["dockerd", "podman"];
pub const DEFAULT_API_SOCKETS: &[&str] = &[
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock",
    "/run/podman/podman.sock",
    "/run/buildkit/buildkitd.sock",
];

#[derive(Clone, Copy, Debug)]
pub enum ProbeKind {
    Tracepoint(&'static str, &'static str),
    BtfTracepoint(&'static str),
}

/// Every program: (name in the object, how it attaches, what it is for).
pub const PROBES: &[(&str, ProbeKind, &str)] = &[
    (
        "sched_process_exec",
        ProbeKind::Tracepoint("sched", "sched_process_exec"),
        "process exec",
    ),
    (
        "sched_process_fork",
        ProbeKind::BtfTracepoint("sched_process_fork"),
        "process tree tracking",
    ),
    (
        "sched_process_exit",
        ProbeKind::Tracepoint("sched", "sched_process_exit"),
        "process exit",
    ),
    (
        "inet_sock_set_state",
        ProbeKind::BtfTracepoint("inet_sock_set_state"),
        "TCP connect",
    ),
    (
        "sys_enter_connect",
        ProbeKind::Tracepoint("syscalls", "sys_enter_connect"),
        "unix connect",
    ),
    (
        "sys_exit_accept4",
        ProbeKind::Tracepoint("syscalls", "sys_exit_accept4"),
        "TCP accept",
    ),
    (
        "sys_exit_accept",
        ProbeKind::Tracepoint("syscalls", "sys_exit_accept"),
        "TCP accept",
    ),
    (
        "sys_enter_sendto",
        ProbeKind::Tracepoint("syscalls", "sys_enter_sendto"),
        "DNS",
    ),
    (
        "sys_enter_sendmsg",
        ProbeKind::Tracepoint("syscalls", "sys_enter_sendmsg"),
        "DNS",
    ),
    (
        "sys_enter_sendmmsg",
        ProbeKind::Tracepoint("syscalls", "sys_enter_sendmmsg"),
        "DNS",
    ),
    (
        "sys_enter_openat",
        ProbeKind::Tracepoint("syscalls", "sys_enter_openat"),
        "file writes",
    ),
    (
        "sys_enter_openat2",
        ProbeKind::Tracepoint("syscalls", "sys_enter_openat2"),
        "file writes",
    ),
    (
        "sys_enter_open",
        ProbeKind::Tracepoint("syscalls", "sys_enter_open"),
        "file writes",
    ),
    (
        "sys_enter_creat",
        ProbeKind::Tracepoint("syscalls", "sys_enter_creat"),
        "file writes",
    ),
    (
        "sys_enter_rename",
        ProbeKind::Tracepoint("syscalls", "sys_enter_rename"),
        "file renames",
    ),
    (
        "sys_enter_renameat",
        ProbeKind::Tracepoint("syscalls", "sys_enter_renameat"),
        "file renames",
    ),
    (
        "sys_enter_renameat2",
        ProbeKind::Tracepoint("syscalls", "sys_enter_renameat2"),
        "file renames",
    ),
    (
        "sys_enter_recvfrom",
        ProbeKind::Tracepoint("syscalls", "sys_enter_recvfrom"),
        "DNS responses",
    ),
    (
        "sys_exit_recvfrom",
        ProbeKind::Tracepoint("syscalls", "sys_exit_recvfrom"),
        "DNS responses",
    ),
    (
        "sys_enter_recvmsg",
        ProbeKind::Tracepoint("syscalls", "sys_enter_recvmsg"),
        "DNS responses",
    ),
    (
        "sys_exit_recvmsg",
        ProbeKind::Tracepoint("syscalls", "sys_exit_recvmsg"),
        "DNS responses",
    ),
    (
        "sys_enter_read",
        ProbeKind::Tracepoint("syscalls", "sys_enter_read"),
        "Engine API requests",
    ),
    (
        "sys_exit_read",
        ProbeKind::Tracepoint("syscalls", "sys_exit_read"),
        "Engine API requests",
    ),
    (
        "sys_enter_write",
        ProbeKind::Tracepoint("syscalls", "sys_enter_write"),
        "Engine API responses",
    ),
    (
        "sys_enter_close",
        ProbeKind::Tracepoint("syscalls", "sys_enter_close"),
        "Engine API responses",
    ),
];

/// Programs without which the sensor cannot do its job: it refuses to start without them.
pub const REQUIRED: &[&str] = &[
    "sched_process_exec",
    "sched_process_fork",
    "sched_process_exit",
];

/// The compiled kernel object, embedded at build time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sensor"));

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("{0}")]
    Btf(#[from] btf::BtfError),
    #[error(
        "loading the kernel programs failed: {0} (run `sensor check` to see what this kernel lacks)"
    )]
    Load(#[source] aya::EbpfError),
    #[error("kernel object lacks map {0} (a build mismatch)")]
    MissingMap(&'static str),
    #[error("setting up map {0}: {1}")]
    Map(&'static str, #[source] aya::maps::MapError),
    #[error("required probe {name} could not attach: {reason}")]
    Required { name: &'static str, reason: String },
    #[error("runtime name {0:?} is longer than the kernel's 15-byte process names")]
    NameTooLong(String),
    #[error("API socket path {0:?} is longer than 107 bytes")]
    SocketTooLong(String),
}

pub struct LoadOptions {
    pub runtime_names: Vec<String>,
    pub api_servers: Vec<String>,
    pub api_sockets: Vec<String>,
    pub ringbuf_bytes: u32,
    pub features: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            runtime_names: DEFAULT_RUNTIME_NAMES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            api_servers: DEFAULT_API_SERVERS.iter().map(|s| s.to_string()).collect(),
            api_sockets: DEFAULT_API_SOCKETS.iter().map(|s| s.to_string()).collect(),
            ringbuf_bytes: 8 * 1024 * 1024,
            features: feature::FILE_EVENTS
                | feature::NET_EVENTS
                | feature::API_EVENTS
                | feature::DNS_EVENTS,
        }
    }
}

pub struct Loaded {
    /// Owns the programs and their links: dropping it detaches everything.
    #[allow(dead_code)]
    pub ebpf: Ebpf,
    pub ringbuf: RingBuf<MapData>,
    pub counters: KernelCounters,
    pub attached: Vec<String>,
    pub failed: BTreeMap<String, String>,
    pub missing_offsets: Vec<btf::MissingField>,
}

/// The maps userspace reads for `sensor_stats` and the metrics (and writes when seeding).
pub struct KernelCounters {
    pub stats: PerCpuArray<MapData, u64>,
    pub tracked: BpfHashMap<MapData, u32, Tracked>,
    pub ringbuf_fill: PerCpuArray<MapData, u64>,
}

fn comm_key(name: &str) -> Result<[u8; COMM_LEN], LoadError> {
    let b = name.as_bytes();
    if b.len() >= COMM_LEN {
        return Err(LoadError::NameTooLong(name.to_string()));
    }
    let mut k = [0u8; COMM_LEN];
    k[..b.len()].copy_from_slice(b);
    Ok(k)
}

pub fn load(opts: &LoadOptions) -> Result<Loaded, LoadError> {
    let (offsets, missing_offsets) = {
        let kernel_btf = btf::Btf::from_file(std::path::Path::new(btf::VMLINUX_BTF))?;
        btf::resolve_offsets(&kernel_btf)
    };
    // One parse of the kernel BTF for aya's loader and the BTF tracepoints, dropped after attach.
    let aya_btf = aya::Btf::from_sys_fs().ok();
    let mut ebpf = EbpfLoader::new()
        .btf(aya_btf.as_ref())
        .map_max_entries("EVENTS", opts.ringbuf_bytes)
        .load(EBPF_OBJECT)
        .map_err(LoadError::Load)?;

    {
        let mut cfg: Array<_, Config> = Array::try_from(
            ebpf.map_mut("CONFIG")
                .ok_or(LoadError::MissingMap("CONFIG"))?,
        )
        .map_err(|e| LoadError::Map("CONFIG", e))?;
        let c = Config {
            self_tgid: std::process::id(),
            features: opts.features,
            offsets,
        };
        cfg.set(0, c, 0).map_err(|e| LoadError::Map("CONFIG", e))?;
    }
    {
        let mut names: BpfHashMap<_, [u8; COMM_LEN], RuntimeName> = BpfHashMap::try_from(
            ebpf.map_mut("RUNTIME_NAMES")
                .ok_or(LoadError::MissingMap("RUNTIME_NAMES"))?,
        )
        .map_err(|e| LoadError::Map("RUNTIME_NAMES", e))?;
        for n in &opts.runtime_names {
            let flags = if opts.api_servers.contains(n) {
                track::API_SERVER
            } else {
                0
            };
            names
                .insert(comm_key(n)?, RuntimeName { flags }, 0)
                .map_err(|e| LoadError::Map("RUNTIME_NAMES", e))?;
        }
    }
    {
        let mut socks: BpfHashMap<_, [u8; UNIX_PATH_CAP], u32> = BpfHashMap::try_from(
            ebpf.map_mut("RUNTIME_SOCKETS")
                .ok_or(LoadError::MissingMap("RUNTIME_SOCKETS"))?,
        )
        .map_err(|e| LoadError::Map("RUNTIME_SOCKETS", e))?;
        for s in &opts.api_sockets {
            let b = s.as_bytes();
            if b.len() >= UNIX_PATH_CAP {
                return Err(LoadError::SocketTooLong(s.clone()));
            }
            let mut k = [0u8; UNIX_PATH_CAP];
            k[..b.len()].copy_from_slice(b);
            socks
                .insert(k, 1, 0)
                .map_err(|e| LoadError::Map("RUNTIME_SOCKETS", e))?;
        }
    }

    let (attached, failed) = attach_all(&mut ebpf, aya_btf.as_ref());
    drop(aya_btf);
    for name in REQUIRED {
        if let Some(reason) = failed.get(*name) {
            return Err(LoadError::Required {
                name,
                reason: reason.clone(),
            });
        }
    }

    let ringbuf = RingBuf::try_from(
        ebpf.take_map("EVENTS")
            .ok_or(LoadError::MissingMap("EVENTS"))?,
    )
    .map_err(|e| LoadError::Map("EVENTS", e))?;
    let stats = PerCpuArray::try_from(
        ebpf.take_map("STATS")
            .ok_or(LoadError::MissingMap("STATS"))?,
    )
    .map_err(|e| LoadError::Map("STATS", e))?;
    let tracked = BpfHashMap::try_from(
        ebpf.take_map("TRACKED")
            .ok_or(LoadError::MissingMap("TRACKED"))?,
    )
    .map_err(|e| LoadError::Map("TRACKED", e))?;
    let ringbuf_fill = PerCpuArray::try_from(
        ebpf.take_map("RINGBUF_FILL")
            .ok_or(LoadError::MissingMap("RINGBUF_FILL"))?,
    )
    .map_err(|e| LoadError::Map("RINGBUF_FILL", e))?;
    Ok(Loaded {
        ebpf,
        ringbuf,
        counters: KernelCounters {
            stats,
            tracked,
            ringbuf_fill,
        },
        attached,
        failed,
        missing_offsets,
    })
}

/// Load and attach every program; returns (attached, failed with reason).
pub fn attach_all(
    ebpf: &mut Ebpf,
    btf: Option<&aya::Btf>,
) -> (Vec<String>, BTreeMap<String, String>) {
    let mut attached = Vec::new();
    let mut failed = BTreeMap::new();
    // A debugging aid: leave named optional probes detached (e.g. to measure their cost).
    let skip: Vec<String> = std::env::var("SENSOR_SKIP_PROBES")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    for (name, kind, _) in PROBES {
        if skip.iter().any(|s| s == name) && !REQUIRED.contains(name) {
            failed.insert(name.to_string(), "skipped (SENSOR_SKIP_PROBES)".to_string());
            continue;
        }
        let r: Result<(), String> = (|| {
            let prog = ebpf.program_mut(name).ok_or("not in the kernel object")?;
            match kind {
                ProbeKind::Tracepoint(cat, tp) => {
                    let p: &mut TracePoint = prog.try_into().map_err(|e| format!("{e}"))?;
                    p.load().map_err(|e| format!("load: {e}"))?;
                    p.attach(cat, tp)
                        .map_err(|e| format!("attach {cat}:{tp}: {e}"))?;
                }
                ProbeKind::BtfTracepoint(tp) => {
                    let btf = btf.ok_or("no kernel BTF")?;
                    let p: &mut BtfTracePoint = prog.try_into().map_err(|e| format!("{e}"))?;
                    p.load(tp, btf).map_err(|e| format!("load: {e}"))?;
                    p.attach().map_err(|e| format!("attach {tp}: {e}"))?;
                }
            }
            Ok(())
        })();
        match r {
            Ok(()) => attached.push(name.to_string()),
            Err(e) => {
                // The verifier log follows the first line; keep the record and the log readable.
                let first = e.lines().next().unwrap_or("").to_string();
                tracing::debug!("probe {name}: {e}");
                failed.insert(name.to_string(), first);
            }
        }
    }
    (attached, failed)
}

/// The ring buffer's peak fill since start: the highest pending byte count any CPU saw.
pub fn read_ringbuf_fill(fill: &PerCpuArray<MapData, u64>) -> u64 {
    fill.get(&0, 0)
        .map(|v| v.iter().copied().max().unwrap_or(0))
        .unwrap_or(0)
}

/// Sum the per-CPU drop counters, by reason name.
pub fn read_kernel_drops(stats: &PerCpuArray<MapData, u64>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (i, reason) in StatReason::ALL.iter().enumerate().take(STAT_REASONS) {
        let v = stats
            .get(&(i as u32), 0)
            .map(|vals| vals.iter().sum::<u64>())
            .unwrap_or(0);
        out.insert(reason.name().to_string(), v);
    }
    out
}

/// Processes already running in runtime trees: roots by name, then their descendants.
pub fn find_runtime_trees(
    runtime_names: &[String],
    api_servers: &[String],
) -> Vec<(proc::ProcInfo, u32, u32)> {
    let all: Vec<proc::ProcInfo> = proc::all_pids()
        .into_iter()
        .filter_map(proc::read_proc)
        .collect();
    let mut children: HashMap<u32, Vec<usize>> = HashMap::new();
    for (i, p) in all.iter().enumerate() {
        children.entry(p.ppid).or_default().push(i);
    }
    let names: HashSet<&str> = runtime_names.iter().map(|s| s.as_str()).collect();
    let me = std::process::id();
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut queue: Vec<(usize, u32, u32)> = Vec::new();
    for (i, p) in all.iter().enumerate() {
        if p.pid != me && names.contains(p.comm.as_str()) {
            let mut flags = track::RUNTIME | track::SEEDED;
            if api_servers.iter().any(|s| s == &p.comm) {
                flags |= track::API_SERVER;
            }
            queue.push((i, flags, 0));
        }
    }
    while let Some((i, flags, depth)) = queue.pop() {
        let p = &all[i];
        if !seen.insert(p.pid) {
            continue;
        }
        out.push((p.clone(), flags, depth));
        for &c in children.get(&p.pid).map(|v| v.as_slice()).unwrap_or(&[]) {
            let child = &all[c];
            let mut f = track::DESCENDANT | track::SEEDED;
            if names.contains(child.comm.as_str()) {
                f |= track::RUNTIME;
                if api_servers.iter().any(|s| s == &child.comm) {
                    f |= track::API_SERVER;
                }
            }
            queue.push((c, f, depth.saturating_add(1)));
        }
    }
    out
}
