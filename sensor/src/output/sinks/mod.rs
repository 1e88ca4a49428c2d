//! Where records go: stdout (default), a file rotated by size, a TCP or unix stream to a
//! collector. Each sink has a bounded queue and its own writer thread, so a slow disk or an
//! absent collector never stalls the event loop. What a sink cannot take or deliver is counted
//! per sink and reason and reported in `sensor_stats.drops`:
//!
//! - `sink_<name>_queue_full`: the queue was full when the record came;
//! - `sink_<name>_write_failed`: stdout or the file refused the write (streams retry instead);
//! - `sink_<name>_unsent_at_exit`: still queued when the drain time ran out at shutdown
//!   (counted after the final `sensor_stats` was queued: logged on stderr and in metrics).
mod ocsf;
mod spec;
mod writers;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

pub use spec::{Format, SinkSpec, Target, expand_kinds};
use writers::{Endpoint, RotatingFile, StdoutWriter, StreamWriter, Writer};

use crate::pipeline::Sink;

/// Reconnect backoff of stream sinks: from 100 ms, doubling, at most 5 s.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Lines a writer takes from its queue per write.
const BATCH: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink {name}: cannot open {path}: {source}")]
    Open {
        name: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("two sinks are named {0:?}: give one a name (`?name=...` or `name = ...`)")]
    DuplicateName(String),
    #[error("sink {0}: cannot start its writer thread: {1}")]
    Thread(String, std::io::Error),
}

/// Live state of one sink, shared with its writer thread and the metrics endpoint.
#[derive(Debug, Default)]
pub struct SinkStatus {
    pub name: String,
    pub type_name: &'static str,
    pub capacity: usize,
    /// Lines in the queue now.
    pub depth: AtomicU64,
    pub written: AtomicU64,
    pub queue_full: AtomicU64,
    pub write_failed: AtomicU64,
    pub unsent_at_exit: AtomicU64,
    pub connected: AtomicBool,
    pub reconnects: AtomicU64,
    /// Set when the drain time ran out: stop retrying, count what is left.
    give_up: AtomicBool,
}

struct SinkHandle {
    kinds: Vec<String>,
    tx: Option<SyncSender<String>>,
    status: Arc<SinkStatus>,
    thread: Option<JoinHandle<()>>,
}

/// All configured sinks behind the pipeline's [`Sink`] interface.
pub struct SinkSet {
    sinks: Vec<SinkHandle>,
}

impl SinkSet {
    /// Opens files now (a bad path fails at start) and starts one writer thread per sink;
    /// streams connect in their thread, with backoff, so a collector may come up later.
    pub fn start(specs: &[SinkSpec]) -> Result<SinkSet, SinkError> {
        let mut sinks = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            if specs[..i].iter().any(|o| o.name == s.name) {
                return Err(SinkError::DuplicateName(s.name.clone()));
            }
            let writer: Box<dyn Writer> = match &s.target {
                Target::Stdout => Box::new(StdoutWriter::new()),
                Target::File {
                    path,
                    max_size,
                    keep,
                } => Box::new(
                    RotatingFile::open(path, *max_size, *keep).map_err(|source| {
                        SinkError::Open {
                            name: s.name.clone(),
                            path: path.display().to_string(),
                            source,
                        }
                    })?,
                ),
                Target::Tcp { addr } => Box::new(StreamWriter::new(Endpoint::Tcp(addr.clone()))),
                Target::Unix { path } => Box::new(StreamWriter::new(Endpoint::Unix(path.clone()))),
            };
            let status = Arc::new(SinkStatus {
                name: s.name.clone(),
                type_name: s.target.type_name(),
                capacity: s.queue,
                connected: AtomicBool::new(!writer.retries()),
                ..Default::default()
            });
            let (tx, rx) = sync_channel(s.queue);
            let st = status.clone();
            let label = s.to_string();
            let format = s.format;
            let thread = std::thread::Builder::new()
                .name(format!("sink-{}", s.name))
                .spawn(move || run_writer(writer, rx, &st, &label, format))
                .map_err(|e| SinkError::Thread(s.name.clone(), e))?;
            sinks.push(SinkHandle {
                kinds: s.kinds.clone(),
                tx: Some(tx),
                status,
                thread: Some(thread),
            });
        }
        Ok(SinkSet { sinks })
    }

    pub fn statuses(&self) -> Vec<Arc<SinkStatus>> {
        self.sinks.iter().map(|s| s.status.clone()).collect()
    }

    fn send(h: &SinkHandle, line: &str) {
        let Some(tx) = &h.tx else {
            h.status.unsent_at_exit.fetch_add(1, Relaxed);
            return;
        };
        h.status.depth.fetch_add(1, Relaxed);
        match tx.try_send(line.to_string()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                h.status.depth.fetch_sub(1, Relaxed);
                h.status.queue_full.fetch_add(1, Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {
                h.status.depth.fetch_sub(1, Relaxed);
                h.status.write_failed.fetch_add(1, Relaxed);
            }
        }
    }
}

impl Sink for SinkSet {
    fn write_line(&mut self, line: &str) {
        for h in &self.sinks {
            SinkSet::send(h, line);
        }
    }
    fn write_record(&mut self, kind: &str, line: &str) {
        for h in &self.sinks {
            if h.kinds.is_empty() || h.kinds.iter().any(|k| k == kind) {
                SinkSet::send(h, line);
            }
        }
    }
    /// Writer threads flush whenever their queue runs empty.
    fn flush(&mut self) {}
    fn drops(&self, d: &mut BTreeMap<String, u64>) {
        for h in &self.sinks {
            let s = &h.status;
            d.insert(
                format!("sink_{}_queue_full", s.name),
                s.queue_full.load(Relaxed),
            );
            d.insert(
                format!("sink_{}_write_failed", s.name),
                s.write_failed.load(Relaxed),
            );
            d.insert(
                format!("sink_{}_unsent_at_exit", s.name),
                s.unsent_at_exit.load(Relaxed),
            );
        }
    }
    /// Closes the queues and waits up to `timeout` for the writers to deliver what they hold.
    fn close(&mut self, timeout: Duration) {
        for h in &mut self.sinks {
            h.tx = None;
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline
            && self
                .sinks
                .iter()
                .any(|h| h.thread.as_ref().is_some_and(|t| !t.is_finished()))
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        for h in &self.sinks {
            h.status.give_up.store(true, Relaxed);
        }
        // A writer blocked in a connect or a write to a stalled collector is not waited for
        // beyond a short grace: what it still holds is counted and the process may exit.
        let grace = Instant::now() + Duration::from_millis(300);
        while Instant::now() < grace
            && self
                .sinks
                .iter()
                .any(|h| h.thread.as_ref().is_some_and(|t| !t.is_finished()))
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        for h in &mut self.sinks {
            if let Some(t) = h.thread.take() {
                if t.is_finished() {
                    let _ = t.join();
                } else {
                    h.status
                        .unsent_at_exit
                        .fetch_add(h.status.depth.load(Relaxed).max(1), Relaxed);
                }
            }
            let lost = h.status.unsent_at_exit.load(Relaxed);
            if lost > 0 {
                tracing::warn!(
                    "sink {}: {lost} records not delivered within {timeout:?} of shutdown (sink_{}_unsent_at_exit)",
                    h.status.name,
                    h.status.name
                );
            }
        }
    }
}

impl Drop for SinkSet {
    fn drop(&mut self) {
        if self.sinks.iter().any(|h| h.thread.is_some()) {
            self.close(Duration::from_secs(1));
        }
    }
}

/// The line as the sink writes it: the record itself, or its OCSF event (converted here, on the
/// writer thread, so that the event loop never pays for it).
fn formatted(line: String, format: Format) -> String {
    match format {
        Format::Ndjson => line,
        Format::Ocsf => ocsf::line_to_ocsf(&line),
    }
}

/// The writer thread: take lines in batches, write them, flush when the queue runs empty.
/// Streams keep a failed batch and retry it after a growing pause; the queue fills meanwhile
/// and the producer counts what it cannot take.
fn run_writer(
    mut w: Box<dyn Writer>,
    rx: Receiver<String>,
    st: &SinkStatus,
    label: &str,
    format: Format,
) {
    let mut batch: Vec<String> = Vec::with_capacity(BATCH);
    let mut backoff = BACKOFF_MIN;
    let mut was_down = false;
    let mut failures_logged = 0u32;
    loop {
        if batch.is_empty() {
            match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(l) => batch.push(formatted(l, format)),
                Err(RecvTimeoutError::Timeout) => {
                    let _ = w.flush();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(l) => batch.push(formatted(l, format)),
                    Err(_) => break,
                }
            }
            st.depth.fetch_sub(batch.len() as u64, Relaxed);
        }
        match w.write_lines(&batch) {
            Ok(()) => {
                st.written.fetch_add(batch.len() as u64, Relaxed);
                batch.clear();
                backoff = BACKOFF_MIN;
                if was_down {
                    was_down = false;
                    st.reconnects.fetch_add(1, Relaxed);
                    tracing::info!("sink {}: connected to {label}", st.name);
                }
                st.connected.store(w.connected(), Relaxed);
                if st.depth.load(Relaxed) == 0 {
                    let _ = w.flush();
                }
            }
            Err((done, e)) => {
                st.written.fetch_add(done as u64, Relaxed);
                batch.drain(..done);
                if w.retries() {
                    st.connected.store(false, Relaxed);
                    if !was_down {
                        was_down = true;
                        tracing::warn!(
                            "sink {}: {label}: {e}; retrying with backoff (up to {BACKOFF_MAX:?})",
                            st.name
                        );
                    }
                    if !sleep_unless_given_up(st, backoff) {
                        break;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                } else {
                    st.write_failed.fetch_add(batch.len() as u64, Relaxed);
                    batch.clear();
                    // One line per failure kind is enough; the counter tells the rest.
                    if failures_logged < 3 {
                        failures_logged += 1;
                        tracing::warn!("sink {}: writing to {label} failed: {e}", st.name);
                    }
                }
            }
        }
    }
    let _ = w.flush();
    let left = batch.len() as u64 + rx.try_iter().count() as u64 + w.unconfirmed();
    st.unsent_at_exit.fetch_add(left, Relaxed);
}

/// Sleeps `d` in short steps; false when shutdown gave up on this sink meanwhile.
fn sleep_unless_given_up(st: &SinkStatus, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if st.give_up.load(Relaxed) {
            return false;
        }
        std::thread::sleep(
            Duration::from_millis(20).min(end.saturating_duration_since(Instant::now())),
        );
    }
    !st.give_up.load(Relaxed)
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader},
        net::TcpListener,
    };

    use super::*;

    fn spec(s: &str) -> SinkSpec {
        s.parse().unwrap()
    }

    #[test]
    fn tcp_sink_reconnects_and_counts_overflow() {
        // Reserve a port, then close it: the collector is down at first.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut set =
            SinkSet::start(&[spec(&format!("tcp:127.0.0.1:{port}?queue=5&kinds=finding"))])
                .unwrap();
        for i in 0..10 {
            set.write_record("finding", &format!("{{\"n\":{i}}}"));
        }
        set.write_record("process_exec", "{}");
        std::thread::sleep(Duration::from_millis(300));
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let (conn, _) = listener.accept().unwrap();
        let mut d = BTreeMap::new();
        set.drops(&mut d);
        let full = d["sink_tcp_queue_full"];
        // The writer holds one batch and the queue 5 more; the rest was counted, not lost silently.
        assert!(full >= 1, "{d:?}");
        set.close(Duration::from_secs(5));
        let got: Vec<String> = BufReader::new(conn).lines().map(|l| l.unwrap()).collect();
        assert_eq!(got.len() as u64 + full, 10, "{got:?}");
        assert_eq!(set.statuses()[0].reconnects.load(Relaxed), 1);
    }

    #[test]
    fn shutdown_with_the_collector_down_is_bounded_and_counted() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut set = SinkSet::start(&[spec(&format!("tcp:127.0.0.1:{port}"))]).unwrap();
        for _ in 0..3 {
            set.write_record("finding", "{}");
        }
        let t = Instant::now();
        set.close(Duration::from_millis(200));
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        let mut d = BTreeMap::new();
        set.drops(&mut d);
        // Unit tests run in parallel: another test may bind the freed port meanwhile and take
        // some lines. Whatever was not written must be counted, never lost silently.
        let written = set.statuses()[0].written.load(Relaxed);
        assert_eq!(
            d["sink_tcp_unsent_at_exit"] + written,
            3,
            "{d:?} written={written}"
        );
        assert_eq!(d["sink_tcp_queue_full"], 0, "{d:?}");
    }

    #[test]
    fn lines_a_collector_dropped_unread_are_sent_again() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut set = SinkSet::start(&[spec(&format!("tcp:127.0.0.1:{port}"))]).unwrap();
        for i in 0..3 {
            set.write_record("finding", &format!("{{\"n\":{i}}}"));
        }
        let (first, _) = listener.accept().unwrap();
        // The lines reach the collector's socket, which it closes without reading them (as a
        // collector that exits does): the kernel had acknowledged them, the sensor wrote them.
        let deadline = Instant::now() + Duration::from_secs(5);
        while set.statuses()[0].written.load(Relaxed) < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(100));
        drop(first);
        set.write_record("finding", "{\"n\":3}");
        let (second, _) = listener.accept().unwrap();
        set.close(Duration::from_secs(5));
        let got: Vec<String> = BufReader::new(second).lines().map(|l| l.unwrap()).collect();
        for i in 0..4 {
            assert!(
                got.contains(&format!("{{\"n\":{i}}}")),
                "line {i} lost: {got:?}"
            );
        }
        let mut d = BTreeMap::new();
        set.drops(&mut d);
        assert_eq!(d["sink_tcp_unsent_at_exit"], 0, "{d:?}");
    }

    #[test]
    fn duplicate_names_are_refused() {
        assert!(matches!(
            SinkSet::start(&[SinkSpec::stdout(), SinkSpec::stdout()]),
            Err(SinkError::DuplicateName(_))
        ));
    }
}
