//! From kernel bytes to written records: decode, enrich, stamp, write, feed the engines.
use std::{
    collections::{BTreeMap, VecDeque},
    io::Write,
    time::{Duration, Instant},
};

use sensor_common::StatReason;

use crate::{
    engine::Engine,
    ingest::decode::decode,
    output::record::{Body, Record, RingbufStats, SCHEMA_VERSION, SensorStats, Timestamp},
    process::enrich::Enricher,
};

/// Where the NDJSON lines go. Implementations must count what they could not deliver.
pub trait Sink: Send {
    fn write_line(&mut self, line: &str);
    /// A record of `kind`: sinks that filter by kind look at it.
    fn write_record(&mut self, _kind: &str, line: &str) {
        self.write_line(line);
    }
    fn flush(&mut self);
    /// At shutdown: deliver what is queued, waiting at most `timeout`.
    fn close(&mut self, _timeout: Duration) {
        self.flush();
    }
    /// Lines lost, by reason (e.g. `sink_stdout_failed`), added to `sensor_stats.drops`.
    fn drops(&self, _drops: &mut BTreeMap<String, u64>) {}
}

/// Standard output, buffered; flushed after each batch of events.
pub struct StdoutSink {
    out: std::io::BufWriter<std::io::Stdout>,
    failed: u64,
}

impl StdoutSink {
    pub fn new() -> Self {
        Self {
            out: std::io::BufWriter::with_capacity(1 << 16, std::io::stdout()),
            failed: 0,
        }
    }
}

impl Sink for StdoutSink {
    fn write_line(&mut self, line: &str) {
        if self
            .out
            .write_all(line.as_bytes())
            .and_then(|_| self.out.write_all(b"\n"))
            .is_err()
        {
            self.failed += 1;
        }
    }
    fn flush(&mut self) {
        let _ = self.out.flush();
    }
    fn drops(&self, d: &mut BTreeMap<String, u64>) {
        d.insert("sink_stdout_failed".into(), self.failed);
    }
}

pub struct PipelineOptions {
    pub host: String,
    /// Write every kernel record (also the raw-only kinds).
    pub raw: bool,
    /// Only these kinds are written (all when empty). Engines still see everything.
    pub kinds: Vec<String>,
    /// Write the kernel-derived records (false in `replay`, which writes derived ones only).
    pub write_inputs: bool,
}

pub struct Pipeline {
    opts: PipelineOptions,
    next_id: u64,
    pub enricher: Enricher,
    engines: Vec<Box<dyn Engine>>,
    sink: Box<dyn Sink>,
    started: Instant,
    /// Wall-clock ns minus CLOCK_BOOTTIME ns, to stamp kernel times.
    boot_to_wall_ns: i64,
    events: BTreeMap<String, u64>,
    records: BTreeMap<String, u64>,
    user_drops: BTreeMap<String, u64>,
    pub ringbuf: RingbufStats,
    /// Latest time seen (the stream's time in replay).
    pub last_ts: Timestamp,
}

fn clock_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

impl Pipeline {
    pub fn new(opts: PipelineOptions, engines: Vec<Box<dyn Engine>>, sink: Box<dyn Sink>) -> Self {
        let boot_to_wall_ns = clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME);
        let mut user_drops = BTreeMap::new();
        for r in [
            "decode_short",
            "decode_unknown_kind",
            "process_table_full",
            "replay_bad_line",
        ] {
            user_drops.insert(r.to_string(), 0);
        }
        Self {
            opts,
            next_id: 1,
            enricher: Enricher::new(65536),
            engines,
            sink,
            started: Instant::now(),
            boot_to_wall_ns,
            events: BTreeMap::new(),
            records: BTreeMap::new(),
            user_drops,
            ringbuf: RingbufStats::default(),
            last_ts: Timestamp::now(),
        }
    }

    pub fn count_drop(&mut self, reason: &str) {
        *self.user_drops.entry(reason.to_string()).or_default() += 1;
    }

    /// One ring-buffer record.
    pub fn handle_kernel(&mut self, bytes: &[u8]) {
        let ev = match decode(bytes) {
            Ok(ev) => ev,
            Err(e) => {
                self.count_drop(e.reason());
                return;
            }
        };
        *self.events.entry(ev.name().to_string()).or_default() += 1;
        let ts = Timestamp::from_unix_nanos(self.boot_to_wall_ns + ev.header().ts_ns as i64);
        if let Some(body) = self.enricher.convert(&ev) {
            self.emit(ts, body);
        }
    }

    /// A record read back from a recorded stream (`sensor replay`).
    pub fn handle_recorded(&mut self, rec: Record) {
        self.last_ts = rec.ts;
        let mut queue = VecDeque::new();
        self.feed_engines(&rec, &mut queue);
        self.drain(rec.ts, queue);
    }

    /// A process running before the sensor started, for the engines only (not written, id 0),
    /// stamped with its start time.
    pub fn seed_engines(&mut self, exec: crate::output::record::ProcessExec) {
        let ts = Timestamp::from_unix_nanos(self.boot_to_wall_ns + exec.start_time_ns as i64);
        let rec = Record {
            schema_version: SCHEMA_VERSION,
            id: 0,
            ts,
            host: self.opts.host.clone(),
            body: Body::ProcessExec(exec),
        };
        let mut out = Vec::new();
        for e in self.engines.iter_mut() {
            e.seed(&rec, &mut out);
        }
        let now = Timestamp::now();
        self.drain(now, out.into_iter().map(|b| (b, false)).collect());
    }

    /// Stamp, write and feed a new record (and whatever the engines derive from it).
    pub fn emit(&mut self, ts: Timestamp, body: Body) {
        self.last_ts = ts;
        let mut queue = VecDeque::from([(body, true)]);
        self.drain_inner(ts, &mut queue);
    }

    fn drain(&mut self, ts: Timestamp, mut derived: VecDeque<(Body, bool)>) {
        self.drain_inner(ts, &mut derived);
    }

    fn drain_inner(&mut self, ts: Timestamp, queue: &mut VecDeque<(Body, bool)>) {
        while let Some((body, is_input)) = queue.pop_front() {
            let rec = Record {
                schema_version: SCHEMA_VERSION,
                id: self.next_id,
                ts,
                host: self.opts.host.clone(),
                body,
            };
            self.next_id += 1;
            let write =
                (!is_input || self.opts.write_inputs) && (self.opts.raw || !rec.body.raw_only());
            if write {
                self.write(&rec);
            }
            self.feed_engines(&rec, queue);
        }
    }

    fn feed_engines(&mut self, rec: &Record, queue: &mut VecDeque<(Body, bool)>) {
        let mut out = Vec::new();
        for e in self.engines.iter_mut() {
            e.observe(rec, &mut out);
        }
        queue.extend(out.into_iter().map(|b| (b, false)));
    }

    fn write(&mut self, rec: &Record) {
        let kind = rec.body.kind();
        if !self.opts.kinds.is_empty() && !self.opts.kinds.iter().any(|k| k == kind) {
            return;
        }
        match serde_json::to_string(rec) {
            Ok(line) => {
                *self.records.entry(kind.to_string()).or_default() += 1;
                self.sink.write_record(kind, &line);
            }
            Err(_) => self.count_drop("serialize_failed"),
        }
    }

    pub fn flush(&mut self) {
        self.sink.flush();
    }

    /// Drains the sinks' queues at shutdown, waiting at most `timeout`.
    pub fn close_sinks(&mut self, timeout: Duration) {
        self.sink.close(timeout);
    }

    /// Kernel events read, by kind (for metrics).
    pub fn events(&self) -> &BTreeMap<String, u64> {
        &self.events
    }

    /// Records written, by kind (for metrics).
    pub fn records(&self) -> &BTreeMap<String, u64> {
        &self.records
    }

    /// Let the engines close what timed out.
    pub fn tick(&mut self, now: Timestamp) {
        let mut out = Vec::new();
        for e in self.engines.iter_mut() {
            e.tick(now, &mut out);
        }
        self.drain(now, out.into_iter().map(|b| (b, false)).collect());
    }

    /// The earliest engine deadline (see `Engine::next_deadline`).
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.engines.iter().filter_map(|e| e.next_deadline()).min()
    }

    /// Flush the engines at shutdown.
    pub fn finish(&mut self, now: Timestamp) {
        let mut out = Vec::new();
        for e in self.engines.iter_mut() {
            e.finish(now, &mut out);
        }
        self.drain(now, out.into_iter().map(|b| (b, false)).collect());
    }

    /// A `sensor_stats` record with kernel drop counters merged in.
    pub fn write_stats(
        &mut self,
        kernel_drops: BTreeMap<String, u64>,
        tracked: u64,
        final_report: bool,
    ) {
        let drops = self.drops(kernel_drops);
        let stats = SensorStats {
            uptime_s: self.started.elapsed().as_secs(),
            events: self.events.clone(),
            records: self.records.clone(),
            drops,
            ringbuf: self.ringbuf.clone(),
            tracked_processes: tracked,
            final_report,
        };
        let ts = Timestamp::now();
        self.emit(ts, Body::SensorStats(stats));
        self.flush();
    }

    /// Every drop counter by reason: the kernel's, userspace's, the engines' and the sinks'.
    pub fn drops(&mut self, kernel_drops: BTreeMap<String, u64>) -> BTreeMap<String, u64> {
        let mut drops = kernel_drops;
        for r in StatReason::ALL {
            drops.entry(r.name().to_string()).or_insert(0);
        }
        self.user_drops
            .insert("process_table_full".into(), self.enricher.table.overflow);
        drops.extend(self.user_drops.iter().map(|(k, v)| (k.clone(), *v)));
        for e in &self.engines {
            e.drops(&mut drops);
        }
        self.sink.drops(&mut drops);
        drops
    }
}
