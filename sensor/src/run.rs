//! `sensor run` and `sensor replay`: the event loop.
use std::{
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
    FileEvents, RunArgs,
    builds::{BuildConfig, BuildTracker},
    detect::{self, policy::PolicyHandle},
    engine::Engine,
    image::{ImageConfig, ImageEngine, dsse, walk::Bounds},
    ingest::{
        caps,
        fanotify::FileEventSource,
        loader::{self, LoadOptions},
        recorded::Recorded,
        start, switch,
    },
    lineage::{self, SharedLineage},
    output::{
        metrics::{Metrics, PolicyReloads, Snapshot},
        record::{Body, Timestamp},
        sinks::{self, SinkSet, SinkSpec},
    },
    pipeline::{Pipeline, PipelineOptions, StdoutSink, TICK, UserDrop},
    process::host::HostPaths,
};

pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
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
    containerd: Option<lineage::containerd::ContainerdLink>,
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
        containerd,
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
    start::ensure_tracefs();
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
    // Marked before the programs load, so before the running processes are seeded: what they
    // write from then on is seen.
    let files = open_file_events(args.file_events())?;
    let file_events = files.1;
    // Only `syscall` takes file events in the kernel programs; `fanotify` reads them in
    // userspace (ingest::fanotify), without the kernel's file capture.
    if file_events != FileEvents::Syscall {
        opts.features &= !feature::FILE_EVENTS;
    }
    if args.no_dns_events {
        opts.features &= !feature::DNS_EVENTS;
    }
    opts.hooks = args.kernel_hooks;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(run_async(args, opts, files))
}

type FileSource = (Option<FileEventSource>, FileEvents, Option<String>);

/// The file-event source: `auto` is fanotify where it can be set up (it needs CAP_SYS_ADMIN),
/// else the syscall dispatch, with one line saying why.
/// Also why `auto` fell back, when it did.
fn open_file_events(mode: FileEvents) -> anyhow::Result<FileSource> {
    let open = || FileEventSource::open(&crate::process::proc::host_root());
    Ok(match mode {
        FileEvents::Fanotify => (
            Some(open().context("--file-events=fanotify")?),
            FileEvents::Fanotify,
            None,
        ),
        FileEvents::Auto => match open() {
            Ok(s) => (Some(s), FileEvents::Fanotify, None),
            // Said once the programs loaded (run_async), not before a bad option's line.
            Err(e) => (None, FileEvents::Syscall, Some(e.to_string())),
        },
        other => (None, other, None),
    })
}

async fn run_async(
    args: RunArgs,
    opts: LoadOptions,
    (mut files, file_source, fallback): FileSource,
) -> anyhow::Result<()> {
    // Before sensor_started is written: whoever sees it may signal at once.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut loaded = loader::load(&opts)?;
    // Loading parsed the kernel's BTF (megabytes) and the object: give that memory back before
    // anything else comes in (the API servers' binaries are mapped while seeding), so that
    // the peak is the larger of the two, not their sum.
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
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
    // containerd is read on a thread of its own: its image stores meanwhile (the lineage
    // engine reconciles with them when they answer), then the images of the containers it
    // starts itself. A hung containerd holds up nothing.
    let since = lineage
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .previous_seen_until();
    let containerd =
        lineage::containerd::start(&HostPaths::default(), &args.containerd_sockets, since);
    let images = ImageConfig {
        paths: HostPaths::default(),
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
        engines(
            &policy,
            lineage,
            args.show_build_args,
            images,
            true,
            containerd,
        ),
        Box::new(sink_set),
    );
    pipeline.ringbuf.size_bytes = opts.ringbuf_bytes as u64;
    // Marked before the running processes are seeded: what they write from now on is seen.
    pipeline.enricher.redact_build_args = !args.show_build_args;
    // Said once the programs loaded: a bad option is the only line a failed start writes.
    if let Some(e) = &fallback {
        tracing::warn!(
            "file events: fanotify unavailable ({e}); taking them in the syscall dispatch, \
             which every process's syscalls pay for"
        );
    }
    if let Some(s) = &files {
        tracing::info!(
            "file events from fanotify: {} filesystem(s) marked, holding {}",
            s.marked.len(),
            s.covered.join(", ")
        );
        if let Some(why) = &s.renames_unavailable {
            tracing::warn!("renames are not reported: {why}");
        }
    }

    let seeded = start::seed_tracked(&mut loaded, &opts, &mut pipeline);
    tracing::info!(
        "attached {} probes ({} hooks for socket data), tracking {} running processes",
        loaded.attached.len(),
        start::kernel_hooks(&loaded),
        seeded.count()
    );
    let mut switch = switch::start()?;
    let started = start::sensor_started(
        &loaded,
        &opts,
        &seeded,
        files.as_ref(),
        file_source.name(),
        args.raw,
    );
    pipeline.emit(Timestamp::now(), Body::SensorStarted(started));
    seeded.feed_engines(&mut pipeline);
    pipeline.flush();
    metrics.set_ready();
    let mut reloads = PolicyReloads::default();
    // SAFETY: the ring buffer map owns its fd and keeps it open for as long as the AsyncFd lives.
    let mut ring = unsafe { AsyncFd::register_with_interest(loaded.ringbuf, Interest::READABLE) }
        .context("watching the ring buffer")?;
    // SAFETY (both): the groups' fds are owned by `files`, which outlives these AsyncFds
    // (declared before them, dropped after them) and never closes them before.
    let close_events = files
        .as_ref()
        .map(|f| unsafe { AsyncFd::register_with_interest(f.close_fd(), Interest::READABLE) })
        .transpose()
        .context("watching the fanotify group")?;
    let rename_events = files
        .as_ref()
        .and_then(|f| f.rename_fd())
        .map(|fd| unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) })
        .transpose()
        .context("watching the fanotify rename group")?;
    let mut tick = tokio::time::interval(TICK);
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
                api_server_uprobes(&mut loaded.ebpf, &mut loaded.links, &mut pipeline);
            }
            guard = ring.readable_mut() => {
                let mut guard = guard.context("reading the ring buffer")?;
                let rb = guard.get_inner_mut();
                while let Some(item) = rb.next() {
                    pipeline.handle_kernel(&item);
                }
                let bytes = pipeline.end_batch();
                guard.clear_ready();
                pipeline.flush();
                api_server_uprobes(&mut loaded.ebpf, &mut loaded.links, &mut pipeline);
                // Let events gather for a moment before the next wake-up: one wake-up (of this
                // task and of the sink writers) per burst instead of one per event. Adds at most
                // COALESCE of latency; the ring buffer holds far more than that at any rate.
                if bytes > 0 {
                    tokio::time::sleep(COALESCE).await;
                }
            }
            ready = file_group_ready(close_events.as_ref(), rename_events.as_ref()) => {
                let (rename, mut guard) = ready.context("reading a fanotify group")?;
                let read = match files.as_mut() {
                    Some(f) => file_events(f, rename, &mut ring, &mut pipeline),
                    None => 0,
                };
                guard.clear_ready();
                pipeline.flush();
                // As for the ring buffer: let events gather (and the kernel merge identical
                // ones) rather than wake on each. Adds at most COALESCE of latency.
                if read > 0 {
                    tokio::time::sleep(COALESCE).await;
                }
            }
            _ = tick.tick() => {
                pipeline.tick(Timestamp::now());
                let stats_due = args.stats_interval > 0 && last_stats.elapsed() >= stats_every;
                // One snapshot a tick at most (walking the tracked map costs a syscall per
                // entry), for the stats record and the metrics alike.
                if stats_due || args.metrics_addr.is_some() {
                    let stats = start::stats(&loaded.counters, files.as_ref(), &mut pipeline, false);
                    if stats_due {
                        last_stats = Instant::now();
                        pipeline.emit(Timestamp::now(), Body::SensorStats(stats.clone()));
                    }
                    if args.metrics_addr.is_some() {
                        metrics.publish(Snapshot {
                            stats,
                            reader: pipeline.reader.clone(),
                            policy_reloads: reloads.clone(),
                        });
                    }
                }
                pipeline.flush();
            }
            _ = sighup.recv() => {
                // Synchronous and short: the ring buffer holds what arrives meanwhile.
                match args.policy.as_deref() {
                    Some(path) => match policy.reload(path) {
                        Ok(()) => {
                            reloads.ok += 1;
                            tracing::info!("SIGHUP: policy reloaded from {}", path.display());
                        }
                        Err(e) => {
                            reloads.failed += 1;
                            tracing::warn!("SIGHUP: keeping the previous policy: {e}");
                        }
                    },
                    None => tracing::info!("SIGHUP: no --policy file, the built-in policy stays"),
                }
            }
            Some((setting, done)) = switch::next(switch.as_mut()) => {
                let _ = done.send(loader::bench_switch(&mut loaded.ebpf, &mut loaded.links, setting));
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    // Drain what is left in the ring buffer, flush the engines, report, exit 0.
    if let Some(f) = files.as_mut() {
        file_events(f, false, &mut ring, &mut pipeline);
        file_events(f, true, &mut ring, &mut pipeline);
    }
    let rb = ring.get_mut();
    while let Some(item) = rb.next() {
        pipeline.handle_kernel(&item);
    }
    pipeline.finish(Timestamp::now());
    let stats = start::stats(&loaded.counters, files.as_ref(), &mut pipeline, true);
    pipeline.emit(Timestamp::now(), Body::SensorStats(stats));
    pipeline.flush();
    pipeline.close_sinks(Duration::from_secs(args.drain_secs));
    Ok(())
}

type FdGuard<'a> = tokio::io::unix::AsyncFdReadyGuard<'a, std::os::fd::RawFd>;

/// Readiness of an optional fd: never, when there is none.
async fn readable(fd: Option<&AsyncFd<std::os::fd::RawFd>>) -> std::io::Result<FdGuard<'_>> {
    match fd {
        Some(fd) => fd.readable().await,
        None => std::future::pending().await,
    }
}

/// The first fanotify group with events queued: `true` for the rename group.
async fn file_group_ready<'a>(
    close: Option<&'a AsyncFd<std::os::fd::RawFd>>,
    rename: Option<&'a AsyncFd<std::os::fd::RawFd>>,
) -> std::io::Result<(bool, FdGuard<'a>)> {
    tokio::select! {
        g = readable(close) => Ok((false, g?)),
        g = readable(rename) => Ok((true, g?)),
    }
}

/// Everything queued in one fanotify group. Each buffer is read first, then the ring buffer is
/// drained, then the buffer's events are looked up: the fork and exec of a process that wrote
/// a file were submitted before its write, so they are in the process table by then (and an
/// exit read meanwhile leaves it known for a while, see `ProcessTable::lookup`).
fn file_events(
    f: &mut FileEventSource,
    rename: bool,
    ring: &mut AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>,
    pipeline: &mut Pipeline,
) -> usize {
    let mut read = 0;
    while let Some(batch) = f.read(rename) {
        read += batch.len();
        let rb = ring.get_mut();
        while let Some(item) = rb.next() {
            pipeline.handle_kernel(&item);
        }
        let ts = Timestamp::now();
        for ev in batch {
            // Untracked writers: the event (and its fd) is dropped here, closed.
            let Some(process) = pipeline.enricher.tracked_process(ev.pid) else {
                continue;
            };
            if let Some(fe) = f.resolve(ev, process) {
                for body in fe.into_bodies() {
                    pipeline.emit(ts, body);
                }
            }
        }
    }
    read
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
            // The recording's host is not this one: its image stores are not read.
            None,
        ),
        Box::new(StdoutSink::new()),
    );
    let mut recorded = Recorded::new(reader);
    pipeline.replay(&mut recorded)?;
    let bad = recorded.not_records();
    pipeline.count_drops(UserDrop::ReplayBadLine.into(), bad);
    if bad > 0 {
        tracing::warn!("{bad} lines were not sensor records and were skipped");
    }
    for (kind, n) in recorded.unknown_kinds() {
        tracing::warn!("{n} records of kind {kind:?}, unknown to this sensor, were skipped");
    }
    Ok(())
}

/// API servers that started or ended since the last batch: their uprobes in or out
/// (`--kernel-hooks narrow`; nothing otherwise).
fn api_server_uprobes(ebpf: &mut aya::Ebpf, links: &mut loader::Links, pipeline: &mut Pipeline) {
    let changes = std::mem::take(&mut pipeline.api_servers);
    for pid in changes.exited {
        loader::detach_api_server(ebpf, links, pid);
    }
    for pid in changes.serving {
        start::uprobe_api_server(ebpf, links, pid);
    }
}
