//! Loading the kernel programs: config map, tracked names and sockets, attach, seed from /proc.
use std::collections::{BTreeMap, HashMap, HashSet};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr,
        RawTracePoint, TracePoint, UProbe,
        cgroup_skb::CgroupSkbLinkId,
        cgroup_sock_addr::CgroupSockAddrLinkId,
        raw_trace_point::RawTracePointLinkId,
        tp_btf::BtfTracePointLinkId,
        trace_point::TracePointLinkId,
        uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
    },
};
use sensor_common::{
    COMM_LEN, Config, RuntimeName, SYSCALL_TABLE, StatReason, Tracked, UNIX_HEAD_LEN,
    UNIX_PATH_CAP, feature, syscall, track,
};
use thiserror::Error;

use crate::{
    ingest::{btf, gobin},
    process::proc,
};

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
    /// A classic tracepoint (category, name). Only the sched ones: a classic `syscalls:*`
    /// tracepoint builds its record for every call of every process (see `sys_enter`).
    Tracepoint(&'static str, &'static str),
    BtfTracepoint(&'static str),
    RawTracepoint(&'static str),
    /// A `cgroup_skb` program (`egress` or `ingress`) at the cgroup v2 root: every inet
    /// socket's packets on the host.
    CgroupSkb(&'static str),
    /// A uprobe in each API server process (`attach_api_server`, offsets from `gobin`): at the
    /// entry of Go's raw syscall function, or on the instruction after its `SYSCALL`.
    GoUprobe(GoAt),
    /// A `cgroup/connect_unix` program, attached at the cgroup2 root (see `cgroup2::root`).
    CgroupUnixConnect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoAt {
    Entry,
    AfterSyscall,
}

/// One kernel program: its name in the object, how it attaches, what it is for, what it needs,
/// and what the sensor does without it (`sensor check` prints all of it).
pub struct Probe {
    pub name: &'static str,
    pub kind: ProbeKind,
    pub purpose: &'static str,
    pub needs: &'static str,
    pub without: &'static str,
}

/// Every program.
pub const PROBES: &[Probe] = &[
    Probe {
        name: "sched_process_exec",
        kind: ProbeKind::Tracepoint("sched", "sched_process_exec"),
        purpose: "process exec, runtime roots by name",
        needs: "tracefs (sched:sched_process_exec)",
        without: "cannot run (required)",
    },
    Probe {
        name: "sched_process_fork",
        kind: ProbeKind::BtfTracepoint("sched_process_fork"),
        purpose: "process tree tracking",
        needs: "BTF tracepoints (5.5+)",
        without: "cannot run (required)",
    },
    Probe {
        name: "sched_process_exit",
        kind: ProbeKind::Tracepoint("sched", "sched_process_exit"),
        purpose: "process exit",
        needs: "tracefs (sched:sched_process_exit)",
        without: "cannot run (required)",
    },
    Probe {
        name: "inet_sock_set_state",
        kind: ProbeKind::BtfTracepoint("inet_sock_set_state"),
        purpose: "TCP connects and their outcome",
        needs: "BTF tracepoints (5.5+)",
        without: "no TCP connect records; builds have no outbound list",
    },
    Probe {
        name: "sock_recv_length",
        kind: ProbeKind::BtfTracepoint("sock_recv_length"),
        purpose: "socket hooks: Engine API requests an API server reads, DNS responses, \
                  accepts (at the first read); runs only on socket reads",
        needs: "the sock_recv_length tracepoint (6.3+)",
        without: "the raw sys_enter/sys_exit dispatch does it (every syscall of every process \
                  pays for it)",
    },
    Probe {
        name: "sock_send_length",
        kind: ProbeKind::BtfTracepoint("sock_send_length"),
        purpose: "socket hooks: API clients and unix connects (at the first send), API \
                  responses, DNS queries; runs only on socket sends",
        needs: "the sock_send_length tracepoint (6.3+)",
        without: "the raw sys_enter/sys_exit dispatch does it",
    },
    Probe {
        name: "go_syscall_enter",
        kind: ProbeKind::GoUprobe(GoAt::Entry),
        purpose: "narrow hooks: Engine API requests and responses of API servers (dockerd, \
                  podman system service), at the entry of Go's raw syscall function; attached \
                  to each API server process, so it runs in no other",
        needs: "uprobes; an x86-64 Go 1.19+ binary (its symbols or the runtime's function table)",
        without: "the socket hooks take the API server's traffic (as with --kernel-hooks socket)",
    },
    Probe {
        name: "go_syscall_exit",
        kind: ProbeKind::GoUprobe(GoAt::AfterSyscall),
        purpose: "narrow hooks: the results of those calls (bytes read, bytes written)",
        needs: "as go_syscall_enter",
        without: "as go_syscall_enter",
    },
    Probe {
        name: "sys_enter",
        kind: ProbeKind::RawTracepoint("sys_enter"),
        purpose: "one dispatch for file writes and, without the socket hooks, unix connects \
                  and API clients, accepts, DNS queries, Engine API requests and responses; \
                  runs on every syscall of every process",
        needs: "raw tracepoints (4.17+)",
        without: "no file writes; without the socket hooks also no API requests (no build \
                  sessions), API clients, accepts or DNS",
    },
    Probe {
        name: "sys_exit",
        kind: ProbeKind::RawTracepoint("sys_exit"),
        purpose: "results of the watched syscalls (build files opened; without the socket \
                  hooks also request bytes read, accepted fds, DNS responses); leaves at once \
                  while none is pending",
        needs: "raw tracepoints (4.17+)",
        without: "no build-file contents; without the socket hooks no API requests, accepts \
                  or DNS responses",
    },
    Probe {
        name: "connect_unix",
        kind: ProbeKind::CgroupUnixConnect,
        purpose: "--kernel-hooks narrow: unix connects and API clients (with who the client \
                  is), at the connect; runs only on unix connects",
        needs: "cgroup/connect_unix (6.7+), a cgroup2 mount, the socket hooks",
        without: "sock_send_length takes them at the first send on a unix socket",
    },
    Probe {
        name: "dns_skb_egress",
        kind: ProbeKind::CgroupSkb("egress"),
        purpose: "DNS queries of tracked processes, from the packets they send to port 53 \
                  (the narrow hooks); runs on every inet packet a local socket sends, other \
                  packets leaving at the protocol check (about 100 ns of the kernel's per \
                  packet here; `--no-dns-events` leaves both out)",
        needs: "cgroup_skb programs (4.10+) and a cgroup v2 mount",
        without: "the socket hooks (or the syscall dispatch) take DNS",
    },
    Probe {
        name: "dns_skb_ingress",
        kind: ProbeKind::CgroupSkb("ingress"),
        purpose: "DNS responses to the sockets tracked processes queried from, from the \
                  packets (the narrow hooks); runs on every inet packet a local socket \
                  receives",
        needs: "cgroup_skb programs (4.10+) and a cgroup v2 mount",
        without: "the socket hooks (or the syscall dispatch) take DNS",
    },
];

/// The DNS packet programs (`--kernel-hooks narrow`), attached together or not at all.
pub const DNS_SKB_PROBES: &[&str] = &["dns_skb_egress", "dns_skb_ingress"];

/// The probes of the socket hooks, attached together or not at all.
pub const SOCKET_PROBES: &[&str] = &["sock_recv_length", "sock_send_length"];
/// The raw syscall dispatch: all of it without the socket hooks, else only for file events.
pub const SYSCALL_PROBES: &[&str] = &["sys_enter", "sys_exit"];
/// The API servers' uprobes (`--kernel-hooks narrow`), attached together or not at all.
pub const GO_PROBES: &[&str] = &["go_syscall_enter", "go_syscall_exit"];
/// The hooks of `--kernel-hooks narrow` that fire only where their fact happens, each taking
/// over a part of the socket hooks' work when it attached.
pub const NARROW_PROBES: &[&str] = &["connect_unix"];

/// Where socket data (API requests, DNS, accepts, API clients) is taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelHooks {
    /// The narrow hooks where they attach (6.7+, cgroup v2), the socket tracepoints for what
    /// they do not take (6.3+), else the syscall dispatch.
    #[default]
    Auto,
    /// The `sock_recv_length`/`sock_send_length` tracepoints; refuse to start without them.
    Socket,
    /// The raw `sys_enter`/`sys_exit` dispatch (what kernels before 6.3 get).
    Syscall,
    /// As `auto`, refusing to start without the socket tracepoints: hooks that fire only where
    /// their fact happens take over from them what they can (the API servers' traffic: uprobes
    /// in them; unix connects: `cgroup/connect_unix`, 6.7+; DNS from the packets:
    /// `cgroup_skb`); a hook that does not attach leaves its part to the socket tracepoints
    /// (`sensor check` and `sensor_started.probes_failed` say why).
    Narrow,
}

/// The syscalls the raw `sys_enter`/`sys_exit` dispatch reads, by this architecture's numbers.
const SYSCALL_CODES: &[(libc::c_long, u8)] = &[
    (libc::SYS_read, syscall::READ),
    (libc::SYS_write, syscall::WRITE),
    (libc::SYS_close, syscall::CLOSE),
    (libc::SYS_connect, syscall::CONNECT),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_accept, syscall::ACCEPT),
    (libc::SYS_accept4, syscall::ACCEPT4),
    (libc::SYS_sendto, syscall::SENDTO),
    (libc::SYS_sendmsg, syscall::SENDMSG),
    (libc::SYS_sendmmsg, syscall::SENDMMSG),
    (libc::SYS_recvfrom, syscall::RECVFROM),
    (libc::SYS_recvmsg, syscall::RECVMSG),
    (libc::SYS_openat, syscall::OPENAT),
    (libc::SYS_openat2, syscall::OPENAT2),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_open, syscall::OPEN),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_creat, syscall::CREAT),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_rename, syscall::RENAME),
    (libc::SYS_renameat, syscall::RENAMEAT),
    (libc::SYS_renameat2, syscall::RENAMEAT2),
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
    #[error("--kernel-hooks socket: {0} (this kernel lacks the socket hooks; use auto or syscall)")]
    NoSocketHooks(String),
}

pub struct LoadOptions {
    pub runtime_names: Vec<String>,
    pub api_servers: Vec<String>,
    pub api_sockets: Vec<String>,
    pub ringbuf_bytes: u32,
    pub features: u32,
    pub hooks: KernelHooks,
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
            hooks: KernelHooks::Auto,
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
    /// The attachments of the attached programs (see [`Links::switch`]).
    pub links: Links,
    pub failed: BTreeMap<String, String>,
    /// Probes not attached because this configuration does not need them, with why.
    pub unused: BTreeMap<String, String>,
    /// Whether socket data comes from the socket hooks (else the raw syscall dispatch).
    pub socket_hooks: bool,
    /// Whether the narrow hooks take all socket data (no socket tracepoint attached).
    pub narrow: bool,
    /// Where DNS is taken (`sensor_started.dns_events`): `packets` (the `cgroup_skb`
    /// programs), `socket`, `syscall`, or `off` (`--no-dns-events`).
    pub dns_events: &'static str,
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
    let (offsets, missing_offsets, sock_addr_uaddr_at) = {
        let kernel_btf = btf::Btf::from_file(std::path::Path::new(btf::VMLINUX_BTF))?;
        let (offsets, missing) = btf::resolve_offsets(&kernel_btf);
        (offsets, missing, sock_addr_uaddr_offset(&kernel_btf))
    };
    // One parse of the kernel BTF for aya's loader and the BTF tracepoints, dropped after attach.
    let aya_btf = aya::Btf::from_sys_fs().ok();
    // Load-time constants of the socket hooks (0: unknown, read by helper instead).
    let known = |off: u32| {
        if off == sensor_common::OFFSET_MISSING {
            0
        } else {
            off
        }
    };
    let (sk_family_at, sk_protocol_at) = (known(offsets.sk_family), known(offsets.sk_protocol));
    let (sk_peer_pid_at, pid_nr_at) = (known(offsets.sk_peer_pid), known(offsets.pid_first_nr));
    let mut ebpf = EbpfLoader::new()
        .btf(aya_btf.as_ref())
        .override_global("SK_FAMILY_AT", &sk_family_at, true)
        .override_global("SK_PROTOCOL_AT", &sk_protocol_at, true)
        .override_global("SK_PEER_PID_AT", &sk_peer_pid_at, true)
        .override_global("PID_NR_AT", &pid_nr_at, true)
        .override_global(
            "SOCK_ADDR_UADDR_AT",
            &sock_addr_uaddr_at.as_ref().map_or(0, |o| o.0),
            true,
        )
        .override_global(
            "SOCK_ADDR_UADDRLEN_AT",
            &sock_addr_uaddr_at.as_ref().map_or(0, |o| o.1),
            true,
        )
        .map_max_entries("EVENTS", opts.ringbuf_bytes)
        .load(EBPF_OBJECT)
        .map_err(LoadError::Load)?;

    let mut config = Config {
        self_tgid: std::process::id(),
        features: opts.features | if idle_probes() { feature::IDLE } else { 0 },
        offsets,
    };
    if config.features & feature::IDLE != 0 {
        tracing::warn!(
            "SENSOR_IDLE_PROBES=1: every kernel program is attached but returns at once; \
             no kernel event will be seen (a bench instrument)"
        );
    }
    write_config(&mut ebpf, config)?;
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
    {
        let mut heads: BpfHashMap<_, [u8; UNIX_HEAD_LEN], u8> = BpfHashMap::try_from(
            ebpf.map_mut("RUNTIME_SOCKET_HEADS")
                .ok_or(LoadError::MissingMap("RUNTIME_SOCKET_HEADS"))?,
        )
        .map_err(|e| LoadError::Map("RUNTIME_SOCKET_HEADS", e))?;
        for s in &opts.api_sockets {
            heads
                .insert(unix_head(s), 1, 0)
                .map_err(|e| LoadError::Map("RUNTIME_SOCKET_HEADS", e))?;
        }
    }

    {
        let mut table: Array<_, u8> = Array::try_from(
            ebpf.map_mut("SYSCALLS")
                .ok_or(LoadError::MissingMap("SYSCALLS"))?,
        )
        .map_err(|e| LoadError::Map("SYSCALLS", e))?;
        for &(nr, code) in SYSCALL_CODES {
            if let Ok(nr) = u32::try_from(nr)
                && (nr as usize) < SYSCALL_TABLE
            {
                table
                    .set(nr, code, 0)
                    .map_err(|e| LoadError::Map("SYSCALLS", e))?;
            }
        }
    }

    let skip = skipped_probes();
    let btf = aya_btf.as_ref();
    let mut a = Attach::default();
    let base: Vec<&str> = PROBES
        .iter()
        .map(|p| p.name)
        .filter(|n| {
            !SOCKET_PROBES.contains(n)
                && !SYSCALL_PROBES.contains(n)
                && !GO_PROBES.contains(n)
                && !NARROW_PROBES.contains(n)
                && !DNS_SKB_PROBES.contains(n)
        })
        .collect();
    a.probes(&mut ebpf, btf, &skip, &base);
    // The socket hooks, unless told not to; both or neither (a program left without its
    // partner is unloaded again, and the syscall dispatch takes over).
    let socket = opts.hooks != KernelHooks::Syscall && {
        a.probes(&mut ebpf, btf, &skip, SOCKET_PROBES);
        let missing: Vec<String> = SOCKET_PROBES
            .iter()
            .filter_map(|n| a.failed.get(*n).map(|why| format!("{n}: {why}")))
            .collect();
        // Narrow hooks with the socket hooks skipped on purpose (SENSOR_SKIP_PROBES): what
        // the narrow hooks take alone, for the tests that show it.
        let skipped = SOCKET_PROBES.iter().all(|n| skip.iter().any(|s| s == n));
        if missing.is_empty() {
            true
        } else if opts.hooks == KernelHooks::Narrow && skipped {
            false
        } else if matches!(opts.hooks, KernelHooks::Socket | KernelHooks::Narrow) {
            return Err(LoadError::NoSocketHooks(missing.join("; ")));
        } else {
            for n in SOCKET_PROBES {
                if a.links.attached.iter().any(|(p, _)| p.name == *n)
                    && let Some(prog) = ebpf.program_mut(n)
                    && let Ok(p) = <&mut BtfTracePoint>::try_from(prog)
                {
                    let _ = p.unload();
                    a.links.attached.retain(|(p, _)| p.name != *n);
                    a.failed
                        .insert(n.to_string(), "unloaded: its partner failed".to_string());
                }
            }
            false
        }
    };
    // The narrow hooks (auto and narrow, on a kernel with the socket hooks: connect_unix needs
    // 6.7): each takes its part over from the socket tracepoints once it attached (its bit);
    // when all did, the socket tracepoints go, and of the node's socket I/O only its inet
    // packets pass a program (the cgroup_skb ones, unless DNS is off).
    let try_narrow = matches!(opts.hooks, KernelHooks::Auto | KernelHooks::Narrow)
        && (socket || opts.hooks == KernelHooks::Narrow);
    let mut complete = false;
    if try_narrow {
        let go = a.go_probes(&mut ebpf, &skip);
        if go {
            config.features |= feature::API_UPROBES;
            a.links.go.loaded = true;
        }
        let unix = match &sock_addr_uaddr_at {
            Err(why) => {
                a.failed.insert("connect_unix".to_string(), why.clone());
                false
            }
            Ok(_) => {
                a.probes(&mut ebpf, btf, &skip, NARROW_PROBES);
                !a.failed.contains_key("connect_unix")
            }
        };
        if unix {
            config.features |= feature::UNIX_CONNECT;
        }
        // DNS from the packets: both programs or neither.
        let dns = if opts.features & feature::DNS_EVENTS != 0 {
            a.probes(&mut ebpf, btf, &skip, DNS_SKB_PROBES);
            let both = a.all_attached(&mut ebpf, DNS_SKB_PROBES);
            if both {
                config.features |= feature::DNS_SKB;
            }
            both
        } else {
            for n in DNS_SKB_PROBES {
                a.unused
                    .insert(n.to_string(), "--no-dns-events".to_string());
            }
            true
        };
        complete = go && unix && dns;
    } else {
        let why = if opts.hooks == KernelHooks::Syscall {
            "--kernel-hooks syscall"
        } else if opts.hooks == KernelHooks::Socket {
            "--kernel-hooks socket"
        } else {
            "no socket hooks on this kernel: the syscall dispatch takes socket data"
        };
        for n in GO_PROBES.iter().chain(NARROW_PROBES).chain(DNS_SKB_PROBES) {
            a.unused.insert(n.to_string(), why.to_string());
        }
    }
    if complete {
        // Attached first to learn that the kernel has them (and to serve meanwhile); the
        // narrow hooks' bits are written before they go, so nothing is missed in between.
        config.features |= feature::SOCKET_HOOKS;
        write_config(&mut ebpf, config)?;
        for n in SOCKET_PROBES {
            if let Some(i) = a.links.attached.iter().position(|(p, _)| p.name == *n) {
                let (probe, link) = a.links.attached.remove(i);
                if let Err(e) = detach(&mut ebpf, probe, link) {
                    tracing::warn!("{e}");
                }
                if let Some(prog) = ebpf.program_mut(n)
                    && let Ok(p) = <&mut BtfTracePoint>::try_from(prog)
                {
                    let _ = p.unload();
                }
            }
            a.failed.remove(*n);
            a.unused.insert(
                n.to_string(),
                "the narrow hooks take socket data (uprobes, connect_unix, cgroup_skb)".to_string(),
            );
        }
    } else if socket {
        config.features |= feature::SOCKET_HOOKS;
        write_config(&mut ebpf, config)?;
    } else if opts.hooks == KernelHooks::Syscall {
        for n in SOCKET_PROBES {
            a.unused
                .insert(n.to_string(), "--kernel-hooks syscall".to_string());
        }
    }
    // The syscall dispatch: everything without the socket hooks (or complete narrow hooks);
    // with them, only file events.
    let dispatch_all = !socket && !complete;
    let dns_events = if opts.features & feature::DNS_EVENTS == 0 {
        "off"
    } else if config.features & feature::DNS_SKB != 0 {
        "packets"
    } else if socket {
        "socket"
    } else {
        "syscall"
    };
    if dispatch_all || opts.features & feature::FILE_EVENTS != 0 {
        a.probes(&mut ebpf, btf, &skip, SYSCALL_PROBES);
    } else {
        for n in SYSCALL_PROBES {
            a.unused.insert(
                n.to_string(),
                "the socket hooks take socket data and file events are off".to_string(),
            );
        }
    }
    write_config(&mut ebpf, config)?;
    let Attach {
        links,
        failed,
        unused,
    } = a;
    let attached = links
        .attached
        .iter()
        .map(|(p, _)| p.name.to_string())
        .collect();
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
        links,
        failed,
        unused,
        socket_hooks: socket && !complete,
        narrow: complete,
        dns_events,
        missing_offsets,
    })
}

/// The first `UNIX_HEAD_LEN - 1` bytes of a socket path, NUL padded (`RUNTIME_SOCKET_HEADS`'
/// key; the kernel side reads it as a string of that size, NUL included).
fn unix_head(path: &str) -> [u8; UNIX_HEAD_LEN] {
    let mut k = [0u8; UNIX_HEAD_LEN];
    for (d, s) in k[..UNIX_HEAD_LEN - 1].iter_mut().zip(path.as_bytes()) {
        *d = *s;
    }
    k
}

/// What became of each probe.
#[derive(Default)]
struct Attach {
    links: Links,
    failed: BTreeMap<String, String>,
    unused: BTreeMap<String, String>,
}

impl Attach {
    /// Whether every probe of `group` attached; if not, those that did are detached again (a
    /// program of the group without its partner would do half the work).
    fn all_attached(&mut self, ebpf: &mut Ebpf, group: &[&str]) -> bool {
        if group.iter().all(|n| !self.failed.contains_key(*n)) {
            return true;
        }
        let (partial, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.links.attached)
            .into_iter()
            .partition(|(p, _)| group.contains(&p.name));
        self.links.attached = keep;
        for (probe, link) in partial {
            let _ = detach(ebpf, probe, link);
            self.failed.insert(
                probe.name.to_string(),
                "detached: its partner failed".to_string(),
            );
        }
        false
    }

    fn probes(&mut self, ebpf: &mut Ebpf, btf: Option<&aya::Btf>, skip: &[String], names: &[&str]) {
        for p in PROBES.iter().filter(|p| names.contains(&p.name)) {
            match attach_one(ebpf, btf, p, skip) {
                Ok(link) => self.links.attached.push((p, link)),
                Err(e) => {
                    self.failed.insert(p.name.to_string(), e);
                }
            }
        }
    }
}

impl Attach {
    /// Load the API servers' uprobe programs (attached per process: `attach_api_server`).
    fn go_probes(&mut self, ebpf: &mut Ebpf, skip: &[String]) -> bool {
        for p in PROBES.iter().filter(|p| GO_PROBES.contains(&p.name)) {
            let loaded = if skip.iter().any(|s| s == p.name) {
                Err("skipped (SENSOR_SKIP_PROBES)".to_string())
            } else {
                ebpf.program_mut(p.name)
                    .ok_or_else(|| "not in the kernel object".to_string())
                    .and_then(|prog| <&mut UProbe>::try_from(prog).map_err(|e| e.to_string()))
                    .and_then(|u| u.load().map_err(|e| format!("load: {e}")))
            };
            match loaded {
                // Attached to no process yet: the links are per process.
                Ok(()) => self.links.attached.push((p, Link::Go)),
                Err(e) => {
                    self.failed.insert(p.name.to_string(), first_line(&e));
                    self.links
                        .attached
                        .retain(|(q, _)| !GO_PROBES.contains(&q.name));
                    return false;
                }
            }
        }
        true
    }
}

/// The API server processes the uprobes are in, and the binaries already looked at.
#[derive(Default)]
pub struct GoProbes {
    /// Whether the programs are loaded (the narrow hooks: `auto` or `narrow`).
    pub loaded: bool,
    procs: BTreeMap<u32, Vec<(&'static str, UProbeLinkId)>>,
    /// By (device, inode): where the probes go, or why they cannot.
    bins: HashMap<(u64, u64), Result<gobin::GoTarget, String>>,
}

/// Put the uprobes into API server process `pid` (its own, not every process running its
/// binary: a `podman build` runs the same file) and hand it to them (`UPROBED`). Ok(false) when
/// the programs are not loaded or the process is already probed.
pub fn attach_api_server(ebpf: &mut Ebpf, links: &mut Links, pid: u32) -> Result<bool, String> {
    use std::os::unix::fs::MetadataExt;
    if !links.go.loaded || links.go.procs.contains_key(&pid) {
        return Ok(false);
    }
    let exe = std::path::PathBuf::from(format!("/proc/{pid}/exe"));
    let m = std::fs::metadata(&exe).map_err(|e| format!("{}: {e}", exe.display()))?;
    let target = links
        .go
        .bins
        .entry((m.dev(), m.ino()))
        .or_insert_with(|| gobin::syscall_offsets(&exe))
        .clone()?;
    let scope = std::num::NonZeroU32::new(pid).ok_or("pid 0")?;
    let mut done: Vec<(&'static str, UProbeLinkId)> = Vec::new();
    let mut attach = |ebpf: &mut Ebpf, name: &'static str, off: u64| -> Result<(), String> {
        let prog = ebpf.program_mut(name).ok_or("not in the kernel object")?;
        let u = <&mut UProbe>::try_from(prog).map_err(|e| e.to_string())?;
        let l = u
            .attach(
                UProbeAttachLocation::AbsoluteOffset(off),
                &exe,
                UProbeScope::OneProcess(scope),
            )
            .map_err(|e| format!("attach {name} at {off:#x} in pid {pid}: {e}"))?;
        done.push((name, l));
        Ok(())
    };
    let r = attach(ebpf, "go_syscall_enter", target.entry)
        .and_then(|()| attach(ebpf, "go_syscall_exit", target.after_syscall))
        .and_then(|()| {
            let mut m: BpfHashMap<_, u32, u32> = ebpf
                .map_mut("UPROBED")
                .ok_or("no UPROBED map".to_string())
                .and_then(|m| BpfHashMap::try_from(m).map_err(|e| e.to_string()))?;
            m.insert(pid, 1, 0).map_err(|e| format!("UPROBED: {e}"))
        });
    if let Err(e) = r {
        detach_links(ebpf, done);
        return Err(e);
    }
    links.go.procs.insert(pid, done);
    Ok(true)
}

/// Take the uprobes out of API server process `pid` (it exited).
pub fn detach_api_server(ebpf: &mut Ebpf, links: &mut Links, pid: u32) {
    let Some(done) = links.go.procs.remove(&pid) else {
        return;
    };
    if let Some(m) = ebpf.map_mut("UPROBED")
        && let Ok(mut m) = BpfHashMap::<_, u32, u32>::try_from(m)
    {
        let _ = m.remove(&pid);
    }
    detach_links(ebpf, done);
}

fn detach_links(ebpf: &mut Ebpf, links: Vec<(&'static str, UProbeLinkId)>) {
    for (name, l) in links {
        if let Some(prog) = ebpf.program_mut(name)
            && let Ok(u) = <&mut UProbe>::try_from(prog)
        {
            // A process that exited took its probe with it: nothing to report.
            let _ = u.detach(l);
        }
    }
}

fn first_line(e: &str) -> String {
    e.lines().next().unwrap_or("").to_string()
}

fn config_map(ebpf: &mut Ebpf) -> Result<Array<&mut MapData, Config>, LoadError> {
    Array::try_from(
        ebpf.map_mut("CONFIG")
            .ok_or(LoadError::MissingMap("CONFIG"))?,
    )
    .map_err(|e| LoadError::Map("CONFIG", e))
}

fn write_config(ebpf: &mut Ebpf, c: Config) -> Result<(), LoadError> {
    config_map(ebpf)?
        .set(0, c, 0)
        .map_err(|e| LoadError::Map("CONFIG", e))
}

/// A bench instrument (`SENSOR_IDLE_PROBES=1`): attach every program, idle (`feature::IDLE`).
fn idle_probes() -> bool {
    std::env::var_os("SENSOR_IDLE_PROBES").is_some_and(|v| v == "1")
}

/// A debugging aid: leave named optional probes detached (e.g. to measure their cost).
fn skipped_probes() -> Vec<String> {
    std::env::var("SENSOR_SKIP_PROBES")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Load and attach one program; the reason when it failed (its first line).
fn attach_one(
    ebpf: &mut Ebpf,
    btf: Option<&aya::Btf>,
    probe: &Probe,
    skip: &[String],
) -> Result<Link, String> {
    let Probe { name, kind, .. } = probe;
    if skip.iter().any(|s| s == name) && !REQUIRED.contains(name) {
        return Err("skipped (SENSOR_SKIP_PROBES)".to_string());
    }
    let r: Result<Link, String> = (|| {
        let prog = ebpf.program_mut(name).ok_or("not in the kernel object")?;
        match kind {
            ProbeKind::Tracepoint(..) => <&mut TracePoint>::try_from(prog)
                .map_err(|e| format!("{e}"))?
                .load(),
            ProbeKind::BtfTracepoint(tp) => {
                let btf = btf.ok_or("no kernel BTF")?;
                <&mut BtfTracePoint>::try_from(prog)
                    .map_err(|e| format!("{e}"))?
                    .load(tp, btf)
            }
            ProbeKind::RawTracepoint(..) => <&mut RawTracePoint>::try_from(prog)
                .map_err(|e| format!("{e}"))?
                .load(),
            ProbeKind::CgroupSkb(..) => <&mut CgroupSkb>::try_from(prog)
                .map_err(|e| format!("{e}"))?
                .load(),
            ProbeKind::GoUprobe(_) => {
                return Err("loaded by Attach::go_probes, attached per process".into());
            }
            ProbeKind::CgroupUnixConnect => <&mut CgroupSockAddr>::try_from(prog)
                .map_err(|e| format!("{e}"))?
                .load(),
        }
        .map_err(|e| format!("load: {e}"))?;
        attach_loaded(ebpf, probe)
    })();
    r.map_err(|e| {
        // The verifier log follows the first line; keep the record and the log readable.
        tracing::debug!("probe {name}: {e}");
        first_line(&e)
    })
}

/// Attach a loaded program where its probe says.
fn attach_loaded(ebpf: &mut Ebpf, probe: &Probe) -> Result<Link, String> {
    let prog = ebpf
        .program_mut(probe.name)
        .ok_or("not in the kernel object")?;
    let e = |e: aya::programs::ProgramError| e.to_string();
    Ok(match probe.kind {
        ProbeKind::Tracepoint(cat, tp) => Link::Tracepoint(
            <&mut TracePoint>::try_from(prog)
                .map_err(e)?
                .attach(cat, tp)
                .map_err(|e| format!("attach {cat}:{tp}: {e}"))?,
        ),
        ProbeKind::BtfTracepoint(tp) => Link::Btf(
            <&mut BtfTracePoint>::try_from(prog)
                .map_err(e)?
                .attach()
                .map_err(|e| format!("attach {tp}: {e}"))?,
        ),
        ProbeKind::RawTracepoint(tp) => Link::Raw(
            <&mut RawTracePoint>::try_from(prog)
                .map_err(e)?
                .attach(tp)
                .map_err(|e| format!("attach {tp}: {e}"))?,
        ),
        ProbeKind::CgroupSkb(direction) => {
            let (root, cgroup) = cgroup2_dir()?;
            let attach_type = if direction == "ingress" {
                CgroupSkbAttachType::Ingress
            } else {
                CgroupSkbAttachType::Egress
            };
            // A link (5.7+) always lets other programs run beside it (as BPF_F_ALLOW_MULTI),
            // and takes no flags: `Single` is the one mode aya passes as 0.
            Link::CgroupSkb(
                <&mut CgroupSkb>::try_from(prog)
                    .map_err(e)?
                    .attach(&cgroup, attach_type, CgroupAttachMode::Single)
                    .map_err(|e| {
                        format!("attach cgroup_skb/{direction} at {}: {e}", root.display())
                    })?,
            )
        }
        // Per process (`attach_api_server`): the bench switch leaves those alone, they fire
        // in the API servers only.
        ProbeKind::GoUprobe(_) => Link::Go,
        ProbeKind::CgroupUnixConnect => {
            let (root, dir) = cgroup2_dir()?;
            // aya makes a link (5.7+), which the kernel always attaches beside the root's other
            // programs (other tools' are not displaced) and which goes with the sensor; a link
            // takes no mode flag (`Single` is none).
            Link::Cgroup(
                <&mut CgroupSockAddr>::try_from(prog)
                    .map_err(e)?
                    .attach(&dir, CgroupAttachMode::Single)
                    .map_err(|e| {
                        let cause = std::error::Error::source(&e)
                            .map(|c| format!(": {c}"))
                            .unwrap_or_default();
                        format!("attach at {}: {e}{cause}", root.display())
                    })?,
            )
        }
    })
}

/// The cgroup v2 root the cgroup programs attach at, and the directory opened.
fn cgroup2_dir() -> Result<(std::path::PathBuf, std::fs::File), String> {
    let root = super::cgroup2::root()?;
    let dir = std::fs::File::open(&root).map_err(|e| format!("opening {}: {e}", root.display()))?;
    Ok((root, dir))
}

/// Offsets of `struct bpf_sock_addr_kern`'s `uaddr` and `uaddrlen` in the kernel's BTF
/// (`connect_unix` reads the kernel's copy of the connect address and its length there), or
/// why not.
fn sock_addr_uaddr_offset(b: &btf::Btf) -> Result<(u32, u32), String> {
    let field = |f: &str| {
        b.member_offset("bpf_sock_addr_kern", f)
            .map_err(|e| format!("bpf_sock_addr_kern.{f} not in the kernel BTF: {e}"))
    };
    Ok((field("uaddr")?, field("uaddrlen")?))
}

/// Detach one program's attachment (it stays loaded, with its maps).
fn detach(ebpf: &mut Ebpf, probe: &Probe, link: Link) -> Result<(), String> {
    let prog = ebpf
        .program_mut(probe.name)
        .ok_or(format!("{}: not in the kernel object", probe.name))?;
    match link {
        Link::Tracepoint(l) => <&mut TracePoint>::try_from(prog).and_then(|p| p.detach(l)),
        Link::Btf(l) => <&mut BtfTracePoint>::try_from(prog).and_then(|p| p.detach(l)),
        Link::Raw(l) => <&mut RawTracePoint>::try_from(prog).and_then(|p| p.detach(l)),
        Link::CgroupSkb(l) => <&mut CgroupSkb>::try_from(prog).and_then(|p| p.detach(l)),
        Link::Cgroup(l) => <&mut CgroupSockAddr>::try_from(prog).and_then(|p| p.detach(l)),
        Link::Go => Ok(()),
    }
    .map_err(|e| format!("{}: detach: {e}", probe.name))
}

/// One program's attachment.
enum Link {
    Tracepoint(TracePointLinkId),
    Btf(BtfTracePointLinkId),
    Raw(RawTracePointLinkId),
    CgroupSkb(CgroupSkbLinkId),
    /// The Go uprobes: their links are per process (`GoProbes`).
    Go,
    Cgroup(CgroupSockAddrLinkId),
}

/// The attachments of the attached programs, and those a bench switch detached.
#[derive(Default)]
pub struct Links {
    attached: Vec<(&'static Probe, Link)>,
    detached: Vec<&'static Probe>,
    /// The API server processes the Go uprobes are in.
    pub go: GoProbes,
}

/// A bench instrument (`SENSOR_BENCH_SWITCH`, ingest/switch.rs): detach every attached
/// program but the two on classic tracepoints (exec, exit; see `Links::switch`), each staying
/// loaded with its maps, or attach again what was detached; or make every
/// program idle (`feature::IDLE`) or active again. Lets a bench alternate a storm with and
/// without the programs, or their work, in one sensor's lifetime; what happens while they are
/// detached or idle is not seen.
pub fn bench_switch(
    ebpf: &mut Ebpf,
    links: &mut Links,
    setting: super::switch::Setting,
) -> Result<(), String> {
    use super::switch::Setting;
    let idle = match setting {
        Setting::Attached => return links.switch(ebpf, true),
        Setting::Detached => return links.switch(ebpf, false),
        Setting::Idle => true,
        Setting::Active => false,
    };
    let mut c = config_map(ebpf)
        .and_then(|cfg| cfg.get(&0, 0).map_err(|e| LoadError::Map("CONFIG", e)))
        .map_err(|e| e.to_string())?;
    c.features = if idle {
        c.features | feature::IDLE
    } else {
        c.features & !feature::IDLE
    };
    write_config(ebpf, c).map_err(|e| e.to_string())
}

impl Links {
    /// Detach the attached programs bar the classic tracepoints' (`on` false), or attach
    /// again what was detached.
    fn switch(&mut self, ebpf: &mut Ebpf, on: bool) -> Result<(), String> {
        if on {
            while let Some(probe) = self.detached.pop() {
                match attach_loaded(ebpf, probe) {
                    Ok(link) => self.attached.push((probe, link)),
                    Err(e) => {
                        self.detached.push(probe);
                        return Err(format!("{}: {e}", probe.name));
                    }
                }
            }
            return Ok(());
        }
        // The classic tracepoints (exec, exit) stay: closing one's perf event waits for RCU
        // grace periods, about 75 ms here, which would set the two storms of a bench's pair
        // that far apart; they fire once per exec and exit, on no other storm's path.
        let (keep, detaching): (Vec<_>, Vec<_>) = std::mem::take(&mut self.attached)
            .into_iter()
            .partition(|(_, link)| matches!(link, Link::Tracepoint(_)));
        self.attached = keep;
        let mut failed = None;
        for (probe, link) in detaching {
            // Counted as detached whatever happens: attaching again is what can tell.
            self.detached.push(probe);
            if let Err(e) = detach(ebpf, probe, link) {
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

/// Tell the kernel programs that `TRACKED` changed from userspace (seeding): their per-CPU
/// lookup cache (`TRACK_CACHE`) holds entries of the previous generation.
pub fn bump_tracked_generation(ebpf: &mut Ebpf) {
    let Some(map) = ebpf.map_mut("TRACK_GEN") else {
        return;
    };
    let Ok(mut generation) = Array::<_, u64>::try_from(map) else {
        return;
    };
    let g = generation.get(&0, 0).unwrap_or(0);
    if let Err(e) = generation.set(0, g.wrapping_add(1), 0) {
        tracing::warn!("cannot bump TRACK_GEN: {e}");
    }
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
    for (i, reason) in <StatReason as strum::IntoEnumIterator>::iter().enumerate() {
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
    let server_flags = |comm: &str| {
        if api_servers.iter().any(|s| s == comm) {
            track::API_SERVER
        } else {
            0
        }
    };
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
            queue.push((i, track::RUNTIME | track::SEEDED | server_flags(&p.comm), 0));
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
                f |= track::RUNTIME | server_flags(&child.comm);
            }
            queue.push((c, f, depth.saturating_add(1)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_heads_keep_fifteen_bytes_nul_padded() {
        let h = unix_head("/var/run/docker.sock");
        assert_eq!(&h[..15], b"/var/run/docker");
        assert_eq!(h[15], 0);
        let h = unix_head("/a.sock");
        assert_eq!(&h[..7], b"/a.sock");
        assert!(h[7..].iter().all(|b| *b == 0));
    }
}
