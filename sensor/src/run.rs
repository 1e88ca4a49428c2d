//! `sensor run` and `sensor replay`: the event loop.
use std::{
    collections::BTreeMap,
    io::BufRead,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context;
use sensor_common::feature;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    RunArgs,
    builds::{BuildConfig, BuildTracker},
    detect::{self, policy::PolicyHandle},
    engine::Engine,
    image::{ImageConfig, ImageEngine, dsse, walk::Bounds},
    ingest::{
        caps,
        loader::{self, LoadOptions},
    },
    lineage::{self, SharedLineage},
    output::{
        metrics::{Metrics, Snapshot},
        record::{Body, Record, SensorStarted, Timestamp},
        sinks::{self, SinkSet, SinkSpec},
    },
    pipeline::{Pipeline, PipelineOptions, StdoutSink},
    process::host::HostPaths,
};

pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// How long the reader lets events gather after a batch (see the loop).
const COALESCE: Duration = Duration::from_millis(4);

/// The engines, in the order they see records: builds, then lineage, then findings.
fn engines(
    policy: &PolicyHandle,
    lineage: SharedLineage,
    show_build_args: bool,
    images: ImageConfig,
    live: bool,
) -> Vec<Box<dyn Engine>> {
    let config = BuildConfig {
        show_build_args,
        classify: policy.classifier(),
        read_command_files: live,
        ..Default::default()
    };
    let mut engines: Vec<Box<dyn Engine>> = vec![
        Box::new(BuildTracker::new(config)),
        Box::new(ImageEngine::new(images)),
    ];
    engines.extend(detect::engines(
        policy.clone(),
        lineage,
        HostPaths::default(),
    ));
    engines
}

/// The capabilities loading needs (see caps.rs); `SENSOR_SKIP_ROOT_CHECK` skips the check.
pub fn preflight_privileges() -> anyhow::Result<()> {
    if std::env::var_os("SENSOR_SKIP_ROOT_CHECK").is_some() {
        return Ok(());
    }
    for w in caps::preflight()? {
        tracing::warn!("{w}");
    }
    Ok(())
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    preflight_privileges()?;
    ensure_tracefs();
    if std::env::var_os("SENSOR_SKIP_ROOT_CHECK").is_none() {
        caps::check_tracefs()?;
    }
    let mut opts = LoadOptions::default();
    for n in &args.runtime_names {
        if !opts.runtime_names.contains(n) {
            opts.runtime_names.push(n.clone());
        }
    }
    opts.api_sockets.extend(args.api_sockets.iter().cloned());
    opts.ringbuf_bytes = args.ringbuf_mib * 1024 * 1024;
    if args.no_file_events {
        opts.features &= !feature::FILE_EVENTS;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(run_async(args, opts))
}

fn ensure_tracefs() {
    let mounted = std::fs::read_to_string("/proc/mounts")
        .map(|m| m.contains(" tracefs "))
        .unwrap_or(false);
    if !mounted && !Path::new("/sys/kernel/tracing/events").exists() {
        let _ = std::process::Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .status();
    }
}

async fn run_async(args: RunArgs, opts: LoadOptions) -> anyhow::Result<()> {
    // Before sensor_started is written: whoever sees it may signal at once.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut loaded = loader::load(&opts)?;
    for m in &loaded.missing_offsets {
        tracing::warn!(
            "kernel field not found, some details will be missing: {}: {}",
            m.field,
            m.reason
        );
    }
    for (name, why) in &loaded.failed {
        tracing::warn!("probe {name} not attached: {why}");
    }
    let host = args.host.clone().unwrap_or_else(host_name);
    // The policy is read whole before anything is written; SIGHUP swaps it (see below).
    let policy = PolicyHandle::load(args.policy.as_deref())?;
    let lineage = lineage::open_store(&policy, Some(&args.state_dir))?;
    let images = ImageConfig {
        paths: HostPaths {
            host_root: crate::process::proc::host_root(),
            ..Default::default()
        },
        bounds: Bounds {
            max_entries: args.image_max_entries,
            ..Default::default()
        },
        read_storage: true,
        state_dir: Some(args.state_dir.clone()),
        key: args
            .provenance_key
            .as_deref()
            .map(dsse::load_key)
            .transpose()?,
    };
    let kinds = sinks::expand_kinds(&args.kinds)?;
    let specs = if args.sinks.is_empty() {
        vec![SinkSpec::stdout()]
    } else {
        args.sinks.clone()
    };
    let sink_set = SinkSet::start(&specs)?;
    let metrics = Metrics::new(sink_set.statuses());
    if let Some(addr) = args.metrics_addr {
        if !addr.ip().is_loopback() {
            tracing::warn!(
                "metrics on {addr}: not a loopback address, anyone who reaches it can read them"
            );
        }
        let bound = metrics.serve(addr).await?;
        tracing::info!("metrics on http://{bound}/metrics");
    }
    let mut pipeline = Pipeline::new(
        PipelineOptions {
            host,
            raw: args.raw,
            kinds,
            write_inputs: true,
        },
        engines(&policy, lineage, args.show_build_args, images, true),
        Box::new(sink_set),
    );
    pipeline.ringbuf.size_bytes = opts.ringbuf_bytes as u64;
    pipeline.enricher.redact_build_args = !args.show_build_args;

    // Seed twice: processes forked while the first pass ran are caught by the second.
    let mut seeded = 0u64;
    let mut seeded_procs = Vec::new();
    for _ in 0..2 {
        for (p, flags, depth) in loader::find_runtime_trees(&opts.runtime_names, &opts.api_servers)
        {
            if loaded.counters.tracked.get(&p.pid, 0).is_ok() {
                continue;
            }
            let t = sensor_common::Tracked { flags, depth };
            if loaded.counters.tracked.insert(p.pid, t, 0).is_ok() {
                seeded += 1;
                pipeline.enricher.seed(&p);
                seeded_procs.push(p);
            } else {
                pipeline.count_drop("tracked_map_full");
            }
        }
    }
    // The kernel's per-CPU cache of tracked lookups predates these entries.
    loader::bump_tracked_generation(&mut loaded.ebpf);
    tracing::info!(
        "attached {} probes, tracking {seeded} running processes",
        loaded.attached.len()
    );
    // Loading parsed the kernel's BTF (megabytes) and the object: give that memory back.
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
    pipeline.emit(
        Timestamp::now(),
        Body::SensorStarted(SensorStarted {
            version: env!("CARGO_PKG_VERSION").into(),
            kernel: kernel_release(),
            probes: loaded.attached.clone(),
            probes_failed: loaded.failed.clone(),
            seeded_processes: seeded,
            runtime_names: opts.runtime_names.clone(),
            raw: args.raw,
        }),
    );
    // The engines learn what was already running (a build step the sensor started during).
    seeded_procs.sort_by_key(|p| p.start_ticks);
    for p in seeded_procs {
        pipeline.seed_engines(seeded_exec(p));
    }
    pipeline.flush();
    metrics.set_ready();
    let mut gauges = Snapshot::default();
    // SAFETY: the ring buffer map owns its fd and keeps it open for as long as the AsyncFd lives.
    let mut ring = unsafe { AsyncFd::register_with_interest(loaded.ringbuf, Interest::READABLE) }
        .context("watching the ring buffer")?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let stats_every = Duration::from_secs(args.stats_interval);
    let mut last_stats = Instant::now();
    loop {
        // An engine waiting for a moment sooner than the next tick (a build_started held for
        // its Dockerfile) wakes the loop then.
        let deadline = pipeline.next_deadline().map(|d| {
            let wait = d
                .unix_nanos()
                .saturating_sub(Timestamp::now().unix_nanos())
                .max(0);
            tokio::time::Instant::now() + Duration::from_nanos(wait as u64)
        });
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)),
                if deadline.is_some() => {
                // What the kernel wrote before the deadline counts as before it.
                let rb = ring.get_mut();
                while let Some(item) = rb.next() {
                    pipeline.handle_kernel(&item);
                }
                pipeline.tick(Timestamp::now());
                pipeline.flush();
            }
            guard = ring.readable_mut() => {
                let mut guard = guard.context("reading the ring buffer")?;
                let rb = guard.get_inner_mut();
                let mut bytes = 0u64;
                while let Some(item) = rb.next() {
                    bytes += item.len() as u64;
                    pipeline.handle_kernel(&item);
                }
                pipeline.ringbuf.batches += 1;
                pipeline.ringbuf.max_batch_bytes = pipeline.ringbuf.max_batch_bytes.max(bytes);
                gauges.ringbuf_bytes += bytes;
                gauges.ringbuf_last_batch_bytes = bytes;
                guard.clear_ready();
                pipeline.flush();
                // Let events gather for a moment before the next wake-up: one wake-up (of this
                // task and of the sink writers) per burst instead of one per event. Adds at most
                // COALESCE of latency; the ring buffer holds far more than that at any rate.
                if bytes > 0 {
                    tokio::time::sleep(COALESCE).await;
                }
            }
            _ = tick.tick() => {
                pipeline.tick(Timestamp::now());
                let stats_due = args.stats_interval > 0 && last_stats.elapsed() >= stats_every;
                // The kernel's counters are read once a tick at most (walking the tracked map
                // costs a syscall per entry), for the stats record and the metrics alike.
                let kernel = (stats_due || args.metrics_addr.is_some())
                    .then(|| read_kernel_counters(&loaded.counters, &mut pipeline));
                if let (true, Some((drops, tracked))) = (stats_due, &kernel) {
                    last_stats = Instant::now();
                    pipeline.write_stats(drops.clone(), *tracked, false);
                }
                pipeline.flush();
                if let (true, Some((drops, tracked))) = (args.metrics_addr.is_some(), kernel) {
                    gauges.drops = drops;
                    gauges.tracked_processes = tracked;
                    publish_metrics(&metrics, &mut pipeline, &mut gauges);
                }
            }
            _ = sighup.recv() => {
                // Synchronous and short: the ring buffer holds what arrives meanwhile.
                match args.policy.as_deref() {
                    Some(path) => match policy.reload(path) {
                        Ok(()) => {
                            gauges.policy_reloads_ok += 1;
                            tracing::info!("SIGHUP: policy reloaded from {}", path.display());
                        }
                        Err(e) => {
                            gauges.policy_reloads_failed += 1;
                            tracing::warn!("SIGHUP: keeping the previous policy: {e}");
                        }
                    },
                    None => tracing::info!("SIGHUP: no --policy file, the built-in policy stays"),
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    // Drain what is left in the ring buffer, flush the engines, report, exit 0.
    let rb = ring.get_mut();
    while let Some(item) = rb.next() {
        pipeline.handle_kernel(&item);
    }
    pipeline.finish(Timestamp::now());
    let (drops, tracked) = read_kernel_counters(&loaded.counters, &mut pipeline);
    pipeline.write_stats(drops, tracked, true);
    pipeline.flush();
    pipeline.close_sinks(Duration::from_secs(args.drain_secs));
    Ok(())
}

/// The kernel's drop counters and tracked-process count; the ring buffer's peak fill goes
/// straight into the pipeline's ring-buffer stats.
fn read_kernel_counters(
    k: &loader::KernelCounters,
    pipeline: &mut Pipeline,
) -> (BTreeMap<String, u64>, u64) {
    pipeline.ringbuf.max_pending_bytes = loader::read_ringbuf_fill(&k.ringbuf_fill);
    (
        loader::read_kernel_drops(&k.stats),
        k.tracked.keys().count() as u64,
    )
}

/// `gauges.drops` holds the kernel's drop counters on entry.
fn publish_metrics(metrics: &Metrics, pipeline: &mut Pipeline, gauges: &mut Snapshot) {
    let kernel = std::mem::take(&mut gauges.drops);
    gauges.events = pipeline.events().clone();
    gauges.records = pipeline.records().clone();
    gauges.drops = pipeline.drops(kernel);
    gauges.ringbuf_size_bytes = pipeline.ringbuf.size_bytes;
    gauges.ringbuf_batches = pipeline.ringbuf.batches;
    gauges.ringbuf_max_batch_bytes = pipeline.ringbuf.max_batch_bytes;
    gauges.ringbuf_max_pending_bytes = pipeline.ringbuf.max_pending_bytes;
    metrics.publish(gauges.clone());
}

/// `sensor replay FILE`: the engines over a recorded stream; prints derived records only.
pub fn replay(
    file: &Path,
    policy: Option<&Path>,
    state_dir: Option<&Path>,
    show_build_args: bool,
) -> anyhow::Result<()> {
    let policy = PolicyHandle::load(policy)?;
    let lineage = lineage::open_store(&policy, state_dir)?;
    let reader: Box<dyn BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?,
        ))
    };
    let mut pipeline = Pipeline::new(
        PipelineOptions {
            host: host_name(),
            raw: true,
            kinds: Vec::new(),
            write_inputs: false,
        },
        engines(
            &policy,
            lineage,
            show_build_args,
            // The recording's images are not the host's now: layers are not read in replay.
            ImageConfig {
                paths: HostPaths::default(),
                bounds: Bounds::default(),
                read_storage: false,
                state_dir: state_dir.map(Path::to_path_buf),
                key: None,
            },
            false,
        ),
        Box::new(StdoutSink::new()),
    );
    let mut bad = 0u64;
    let mut last_tick: Option<Timestamp> = None;
    for (n, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading line {}", n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(&line) {
            Ok(rec) => {
                let ts = rec.ts;
                pipeline.handle_recorded(rec);
                // Time passes as in the recording: tick each recorded second.
                if last_tick.is_none_or(|t| ts.millis_since(&t) >= 1000) {
                    pipeline.tick(ts);
                    last_tick = Some(ts);
                }
            }
            Err(e) => {
                bad += 1;
                pipeline.count_drop("replay_bad_line");
                tracing::warn!("line {}: not a sensor record: {e}", n + 1);
            }
        }
    }
    let end = pipeline.last_ts;
    pipeline.finish(end);
    pipeline.flush();
    if bad > 0 {
        tracing::warn!("{bad} lines were not sensor records and were skipped");
    }
    Ok(())
}

/// A process found in /proc at start, as the `process_exec` the engines would have seen.
fn seeded_exec(p: crate::process::proc::ProcInfo) -> crate::output::record::ProcessExec {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let argv = crate::process::redact::redact_exec_argv(&p.argv).unwrap_or(p.argv);
    crate::output::record::ProcessExec {
        process: crate::output::record::ProcessRef {
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
