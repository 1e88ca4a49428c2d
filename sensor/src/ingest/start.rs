//! Starting up, between loading the programs and reading the ring buffer: tracefs mounted if
//! it is not, the processes already running seeded into the kernel's tracked set and the
//! process table, and `sensor_started` saying what was attached and seeded.
use std::{ffi::CStr, path::Path};

use sensor_common::{StatReason, Tracked};

use crate::{
    ingest::{
        fanotify::FileEventSource,
        gobin,
        loader::{self, KernelCounters, LoadOptions, Loaded},
    },
    output::record::{ProcessExec, ProcessRef, SensorStarted, SensorStats},
    pipeline::Pipeline,
    process::{proc::ProcInfo, redact::redact_exec_argv},
};

const TRACEFS: &CStr = c"/sys/kernel/tracing";

/// Mounts tracefs at /sys/kernel/tracing when it is not there (a container with /sys but not
/// its submounts). A failure is left to `caps::check_tracefs`, which says what to do.
pub fn ensure_tracefs() {
    let mounted = std::fs::read_to_string("/proc/mounts")
        .map(|m| m.contains(" tracefs "))
        .unwrap_or(false);
    if mounted || Path::new("/sys/kernel/tracing/events").exists() {
        return;
    }
    // SAFETY: every pointer is a NUL-terminated string that outlives the call; tracefs takes
    // no data.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            TRACEFS.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        tracing::debug!("mounting tracefs on /sys/kernel/tracing: {e}");
    }
}

/// The processes running when the sensor started, in the kernel's tracked set.
pub struct Seeded {
    procs: Vec<ProcInfo>,
}

impl Seeded {
    pub fn count(&self) -> u64 {
        self.procs.len() as u64
    }

    /// The engines learn what was already running (a build step the sensor started during),
    /// oldest first, as the `process_exec` they would have seen.
    pub fn feed_engines(mut self, pipeline: &mut Pipeline) {
        self.procs.sort_by_key(|p| p.start_ticks);
        for p in self.procs {
            pipeline.seed_engines(seeded_exec(p));
        }
    }
}

/// Tracks the runtime trees already running, in the kernel and the process table. Seeds
/// twice: processes forked while the first pass ran are caught by the second.
pub fn seed_tracked(loaded: &mut Loaded, opts: &LoadOptions, pipeline: &mut Pipeline) -> Seeded {
    let mut procs = Vec::new();
    for _ in 0..2 {
        for (p, flags, depth) in loader::find_runtime_trees(&opts.runtime_names, &opts.api_servers)
        {
            if loaded.counters.tracked.get(&p.pid, 0).is_ok() {
                continue;
            }
            if loaded
                .counters
                .tracked
                .insert(p.pid, Tracked { flags, depth }, 0)
                .is_ok()
            {
                pipeline.enricher.seed(&p, flags);
                procs.push(p);
            } else {
                pipeline.count_drop(StatReason::TrackedMapFull.name());
            }
        }
    }
    // The kernel's per-CPU cache of tracked lookups predates these entries.
    loader::bump_tracked_generation(&mut loaded.ebpf);
    for p in &procs {
        if opts.api_servers.contains(&p.comm) && gobin::serves_api(&p.comm, &p.argv) {
            uprobe_api_server(&mut loaded.ebpf, &mut loaded.links, p.pid);
        }
    }
    Seeded { procs }
}

/// Put the uprobes into API server `pid` (`--kernel-hooks narrow`); one that cannot take them
/// (not an x86-64 Go 1.19+ binary, or gone) stays on the socket hooks, with a warning.
pub fn uprobe_api_server(ebpf: &mut aya::Ebpf, links: &mut loader::Links, pid: u32) {
    match loader::attach_api_server(ebpf, links, pid) {
        Ok(true) => tracing::debug!("uprobes in API server {pid}"),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!("API server {pid} keeps its Engine API traffic on the socket hooks: {e}")
        }
    }
}

/// The `sensor_started` record: what was attached, what failed, what was seeded, and where
/// file events come from (`file_events`; fanotify's groups, when they are the source, are
/// listed with the kernel programs).
pub fn sensor_started(
    loaded: &Loaded,
    opts: &LoadOptions,
    seeded: &Seeded,
    files: Option<&FileEventSource>,
    file_events: &str,
    raw: bool,
) -> SensorStarted {
    let mut probes = loaded.attached.clone();
    if let Some(f) = files {
        probes.push("fanotify_close_write".to_string());
        if f.rename_fd().is_some() {
            probes.push("fanotify_moved_to".to_string());
        }
    }
    SensorStarted {
        version: env!("CARGO_PKG_VERSION").into(),
        kernel: kernel_release(),
        probes,
        probes_failed: loaded.failed.clone(),
        probes_unused: loaded.unused.clone(),
        kernel_hooks: kernel_hooks(loaded).into(),
        file_events: file_events.into(),
        dns_events: loaded.dns_events.into(),
        seeded_processes: seeded.count(),
        runtime_names: opts.runtime_names.clone(),
        raw,
    }
}

/// Where socket data is taken, as `sensor_started.kernel_hooks` says it.
pub fn kernel_hooks(loaded: &Loaded) -> &'static str {
    if loaded.narrow {
        "narrow"
    } else if loaded.socket_hooks {
        "socket"
    } else {
        "syscall"
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The counters now, with the kernel's drop counters and tracked-process count; the ring
/// buffer's peak fill goes into the pipeline's ring-buffer stats first.
/// The kernel's drop counters (and fanotify's, when it is the file-event source) go in with
/// the pipeline's own.
pub fn stats(
    k: &KernelCounters,
    files: Option<&FileEventSource>,
    pipeline: &mut Pipeline,
    final_report: bool,
) -> SensorStats {
    pipeline.ringbuf.max_pending_bytes = loader::read_ringbuf_fill(&k.ringbuf_fill);
    let mut drops = loader::read_kernel_drops(&k.stats);
    if let Some(f) = files {
        f.drops(&mut drops);
        for (kind, n) in &f.events {
            pipeline.set_event_count(kind, *n);
        }
    }
    pipeline.stats(drops, k.tracked.keys().count() as u64, final_report)
}

/// A process found in /proc at start, as the `process_exec` the engines would have seen.
fn seeded_exec(p: ProcInfo) -> ProcessExec {
    let hz = rustix::param::clock_ticks_per_second().max(1);
    let argv = redact_exec_argv(&p.argv).unwrap_or(p.argv);
    ProcessExec {
        process: ProcessRef {
            pid: p.pid,
            ppid: p.ppid,
            uid: p.uid,
            gid: p.gid,
            comm: p.comm,
            exe: p.exe.clone(),
            ..Default::default()
        },
        filename: p
            .exe
            .unwrap_or_else(|| argv.first().cloned().unwrap_or_default()),
        argv,
        argv_truncated: false,
        start_time_ns: p.start_ticks.saturating_mul(1_000_000_000 / hz),
    }
}
