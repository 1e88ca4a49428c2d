//! From kernel bytes to written records: decode, enrich, stamp, write, feed the engines.
use std::{
    collections::{BTreeMap, VecDeque},
    io::Write,
    time::{Duration, Instant},
};

use sensor_common::StatReason;
use strum::IntoEnumIterator;

use crate::{
    engine::Engine,
    ingest::decode::{DecodeError, KernelEvent, decode},
    output::metrics::ReaderStats,
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

/// How often the engines' clocks advance: the live loop's interval, and the recorded time
/// between ticks when a stream is replayed.
pub const TICK: Duration = Duration::from_secs(1);

/// What userspace loses, by reason (the kernel's reasons are `StatReason`, the decoder's
/// `DecodeError::reason`, the engines' and sinks' their own).
#[derive(Clone, Copy, Debug, strum::EnumIter, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum UserDrop {
    /// The process table was full: the oldest process was forgotten.
    ProcessTableFull,
    /// `sensor replay`: a line that is not a sensor record.
    ReplayBadLine,
    /// A record that serde could not write.
    SerializeFailed,
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
    pub reader: ReaderStats,
    /// Bytes of the ring-buffer batch being read.
    batch_bytes: u64,
    /// Latest time seen (the stream's time in replay).
    pub last_ts: Timestamp,
    /// API servers seen starting and ending since the reader last took them (their uprobes,
    /// `--kernel-hooks narrow`).
    pub api_servers: ApiServerChanges,
}

#[derive(Debug, Default, PartialEq)]
pub struct ApiServerChanges {
    pub serving: Vec<u32>,
    pub exited: Vec<u32>,
}

impl ApiServerChanges {
    /// An exec or exit the kernel reported: an API server's (serving the Engine API) is noted.
    fn note(&mut self, ev: &KernelEvent) {
        match ev {
            KernelEvent::Exec(e)
                if e.header.track_flags & sensor_common::track::API_SERVER != 0 =>
            {
                use crate::process::{enrich, proc::split_argv};
                let args = split_argv(enrich::captured(&e.data.argv, e.data.argv_len));
                let comm = enrich::comm_str(&e.header.comm);
                if crate::ingest::gobin::serves_api(&comm, &args) {
                    self.serving.push(e.header.pid);
                }
            }
            KernelEvent::Exit(e)
                if e.header.track_flags & sensor_common::track::API_SERVER != 0 =>
            {
                self.exited.push(e.header.pid);
            }
            _ => {}
        }
    }
}

fn clock_ns(clock: rustix::time::ClockId) -> i64 {
    let ts = rustix::time::clock_gettime(clock);
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

impl Pipeline {
    pub fn new(opts: PipelineOptions, engines: Vec<Box<dyn Engine>>, sink: Box<dyn Sink>) -> Self {
        let boot_to_wall_ns =
            clock_ns(rustix::time::ClockId::Realtime) - clock_ns(rustix::time::ClockId::Boottime);
        let mut user_drops = BTreeMap::new();
        // Every known reason is listed, zero or not: the decoder's names come from its errors.
        let decode = [
            DecodeError::Short { got: 0, need: 0 },
            DecodeError::UnknownKind(0),
        ];
        let names = decode.iter().map(DecodeError::reason);
        for r in names.chain(UserDrop::iter().map(<&str>::from)) {
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
            reader: ReaderStats::default(),
            batch_bytes: 0,
            last_ts: Timestamp::now(),
            api_servers: ApiServerChanges::default(),
        }
    }

    pub fn count_drop(&mut self, reason: &'static str) {
        self.count_drops(reason, 1);
    }

    pub fn count_drops(&mut self, reason: &'static str, n: u64) {
        *self.user_drops.entry(reason.to_string()).or_default() += n;
    }

    /// One ring-buffer record.
    pub fn handle_kernel(&mut self, bytes: &[u8]) {
        self.batch_bytes += bytes.len() as u64;
        let ev = match decode(bytes) {
            Ok(ev) => ev,
            Err(e) => {
                self.count_drop(e.reason());
                return;
            }
        };
        *self.events.entry(ev.name().to_string()).or_default() += 1;
        self.api_servers.note(&ev);
        let ts = Timestamp::from_unix_nanos(self.boot_to_wall_ns + ev.header().ts_ns as i64);
        if let Some(body) = self.enricher.convert(&ev) {
            self.emit(ts, body);
        }
    }

    /// The reader drained the ring buffer: count the batch; returns its bytes.
    pub fn end_batch(&mut self) -> u64 {
        let bytes = std::mem::take(&mut self.batch_bytes);
        self.ringbuf.batches += 1;
        self.ringbuf.max_batch_bytes = self.ringbuf.max_batch_bytes.max(bytes);
        self.reader.read_bytes += bytes;
        self.reader.last_batch_bytes = bytes;
        bytes
    }

    /// A recorded stream (`sensor replay`, the fixture tests): every record goes through the
    /// same drain as a live one, time passes as in the recording (a tick each [`TICK`] of the
    /// stream's own time, as the live loop ticks each [`TICK`] of the wall clock), and the
    /// engines finish at its end.
    pub fn replay<E>(
        &mut self,
        records: impl IntoIterator<Item = Result<Record, E>>,
    ) -> Result<(), E> {
        let every = TICK.as_millis() as u64;
        let mut last_tick: Option<Timestamp> = None;
        for rec in records {
            let rec = rec?;
            let ts = rec.ts;
            self.handle_recorded(rec);
            if last_tick.is_none_or(|t| ts.millis_since(&t) >= every) {
                self.tick(ts);
                last_tick = Some(ts);
            }
        }
        let end = self.last_ts;
        self.finish(end);
        self.flush();
        Ok(())
    }

    /// A record read back from a recorded stream. What it derives is numbered after it, so
    /// derived ids never repeat a recorded one (evidence ids point at recorded records).
    fn handle_recorded(&mut self, rec: Record) {
        self.last_ts = rec.ts;
        self.next_id = self.next_id.max(rec.id + 1);
        let mut queue = VecDeque::new();
        self.commit(&rec);
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
            self.commit(&rec);
            let write =
                (!is_input || self.opts.write_inputs) && (self.opts.raw || !rec.body.raw_only());
            if write {
                self.write(&rec);
            }
            self.feed_engines(&rec, queue);
        }
    }

    fn commit(&mut self, rec: &Record) {
        for e in self.engines.iter_mut() {
            e.commit(rec);
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
            Err(_) => self.count_drop(UserDrop::SerializeFailed.into()),
        }
    }

    pub fn flush(&mut self) {
        self.sink.flush();
    }

    /// Drains the sinks' queues at shutdown, waiting at most `timeout`.
    pub fn close_sinks(&mut self, timeout: Duration) {
        self.sink.close(timeout);
    }

    /// Events read outside the ring buffer (fanotify's), by kind, as their source counts them.
    pub fn set_event_count(&mut self, kind: &str, n: u64) {
        self.events.insert(kind.to_string(), n);
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

    /// The counters now, kernel drop counters merged in: the one snapshot that `sensor_stats`
    /// writes and `/metrics` serves.
    pub fn stats(
        &mut self,
        kernel_drops: BTreeMap<String, u64>,
        tracked: u64,
        final_report: bool,
    ) -> SensorStats {
        SensorStats {
            uptime_s: self.started.elapsed().as_secs(),
            events: self.events.clone(),
            records: self.records.clone(),
            drops: self.drops(kernel_drops),
            ringbuf: self.ringbuf.clone(),
            tracked_processes: tracked,
            final_report,
        }
    }

    /// Every drop counter by reason: the kernel's, userspace's, the engines' and the sinks'.
    pub fn drops(&mut self, kernel_drops: BTreeMap<String, u64>) -> BTreeMap<String, u64> {
        let mut drops = kernel_drops;
        for r in <StatReason as strum::IntoEnumIterator>::iter() {
            drops.entry(r.name().to_string()).or_insert(0);
        }
        self.user_drops.insert(
            <&str>::from(UserDrop::ProcessTableFull).into(),
            self.enricher.table.overflow,
        );
        // Added, not replaced: seeding counts `tracked_map_full` as the kernel does.
        for (k, v) in &self.user_drops {
            *drops.entry(k.clone()).or_default() += v;
        }
        for e in &self.engines {
            e.drops(&mut drops);
        }
        self.sink.drops(&mut drops);
        drops
    }
}

/// The fixture tests' way into [`Pipeline::replay`]: the records a replay writes, read back.
#[cfg(test)]
pub mod testing {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Keeps the lines written, to read them back as records.
    struct Collect(Arc<Mutex<Vec<String>>>);

    impl Sink for Collect {
        fn write_line(&mut self, line: &str) {
            self.0.lock().unwrap().push(line.to_string());
        }
        fn flush(&mut self) {}
    }

    /// `engines` over `records` as `sensor replay` runs them: the derived records as written,
    /// and every drop counter after the stream's end.
    pub fn replay_with_drops(
        records: impl IntoIterator<Item = Record>,
        engines: Vec<Box<dyn Engine>>,
    ) -> (Vec<Record>, BTreeMap<String, u64>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let opts = PipelineOptions {
            host: "replay".into(),
            raw: true,
            kinds: Vec::new(),
            write_inputs: false,
        };
        let mut p = Pipeline::new(opts, engines, Box::new(Collect(lines.clone())));
        let ok = records.into_iter().map(Ok::<_, std::convert::Infallible>);
        let Ok(()) = p.replay(ok);
        let drops = p.drops(BTreeMap::new());
        let lines = lines.lock().unwrap();
        let recs = lines.iter().map(|l| serde_json::from_str(l).unwrap());
        (recs.collect(), drops)
    }

    pub fn replay_records(
        records: impl IntoIterator<Item = Record>,
        engines: Vec<Box<dyn Engine>>,
    ) -> Vec<Record> {
        replay_with_drops(records, engines).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline() -> Pipeline {
        let opts = PipelineOptions {
            host: "h".into(),
            raw: false,
            kinds: Vec::new(),
            write_inputs: true,
        };
        Pipeline::new(opts, Vec::new(), Box::new(StdoutSink::new()))
    }

    /// Seeding counts `tracked_map_full` as the kernel does: the two add up (the userspace
    /// count used to replace the kernel's), and every known reason is listed, zero or not.
    #[test]
    fn stats_add_kernel_and_userspace_counts_of_one_reason() {
        let mut p = pipeline();
        p.count_drop(StatReason::TrackedMapFull.name());
        let kernel = BTreeMap::from([("tracked_map_full".to_string(), 2)]);
        let s = p.stats(kernel, 7, false);
        assert_eq!(s.drops["tracked_map_full"], 3);
        for r in ["decode_short", "decode_unknown_kind", "serialize_failed"] {
            assert_eq!(s.drops[r], 0, "{r}");
        }
        assert_eq!(s.tracked_processes, 7);
    }
}
