//! Prometheus text endpoint (`--metrics-addr 127.0.0.1:9464`, off by default) with `/metrics`,
//! `/healthz` and `/readyz`. Served by hand over a tokio listener: a handful of counters does
//! not need an HTTP framework. The event loop publishes a snapshot each second; sink queue
//! depths are read live.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Instant,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::output::sinks::SinkStatus;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What the event loop last published.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub events: BTreeMap<String, u64>,
    pub records: BTreeMap<String, u64>,
    pub drops: BTreeMap<String, u64>,
    pub ringbuf_size_bytes: u64,
    pub ringbuf_batches: u64,
    pub ringbuf_bytes: u64,
    pub ringbuf_last_batch_bytes: u64,
    pub ringbuf_max_batch_bytes: u64,
    pub ringbuf_max_pending_bytes: u64,
    pub tracked_processes: u64,
    pub policy_reloads_ok: u64,
    pub policy_reloads_failed: u64,
}

/// Shared between the event loop (writer) and the endpoint (reader).
#[derive(Clone)]
pub struct Metrics {
    snapshot: Arc<Mutex<Snapshot>>,
    ready: Arc<AtomicBool>,
    sinks: Arc<Vec<Arc<SinkStatus>>>,
    started: Instant,
}

impl Metrics {
    pub fn new(sinks: Vec<Arc<SinkStatus>>) -> Self {
        Metrics {
            snapshot: Arc::default(),
            ready: Arc::default(),
            sinks: Arc::new(sinks),
            started: Instant::now(),
        }
    }

    pub fn publish(&self, s: Snapshot) {
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    /// Ready once `sensor_started` was written: probes attached, runtime trees seeded.
    pub fn set_ready(&self) {
        self.ready.store(true, Relaxed);
    }

    /// Binds now (a taken or bad address fails at start) and serves in the background.
    pub async fn serve(&self, addr: SocketAddr) -> Result<SocketAddr, MetricsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError::Bind { addr, source })?;
        let local = listener.local_addr().unwrap_or(addr);
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((conn, _)) => {
                        let m = me.clone();
                        tokio::spawn(async move { m.answer(conn).await });
                    }
                    Err(e) => tracing::warn!("metrics: accept failed: {e}"),
                }
            }
        });
        Ok(local)
    }

    async fn answer(&self, mut conn: TcpStream) {
        let mut buf = vec![0u8; 4096];
        let mut n = 0;
        // Only the request line matters; read until the end of the headers or 4 KiB.
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while n < buf.len() {
                match conn.read(&mut buf[n..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n")
                    || buf[..n].windows(2).any(|w| w == b"\n\n")
                {
                    break;
                }
            }
        })
        .await;
        if read.is_err() {
            return;
        }
        let req = String::from_utf8_lossy(&buf[..n]);
        let mut parts = req.lines().next().unwrap_or("").split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let path = target.split('?').next().unwrap_or("");
        let (status, ctype, body) = match (method, path) {
            ("GET" | "HEAD", "/metrics") => (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                self.render(),
            ),
            ("GET" | "HEAD", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
            ("GET" | "HEAD", "/readyz") if self.ready.load(Relaxed) => {
                ("200 OK", "text/plain", "ready\n".to_string())
            }
            ("GET" | "HEAD", "/readyz") => (
                "503 Service Unavailable",
                "text/plain",
                "starting\n".to_string(),
            ),
            ("GET" | "HEAD", _) => (
                "404 Not Found",
                "text/plain",
                "not found: try /metrics, /healthz, /readyz\n".to_string(),
            ),
            _ => (
                "405 Method Not Allowed",
                "text/plain",
                "GET only\n".to_string(),
            ),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = conn.write_all(head.as_bytes()).await;
        if method != "HEAD" {
            let _ = conn.write_all(body.as_bytes()).await;
        }
        let _ = conn.shutdown().await;
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let s = self
            .snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut o = String::new();
        family(&mut o, "sensor_up", "gauge", "1 while the sensor runs.");
        sample(&mut o, "sensor_up", &[], 1);
        family(
            &mut o,
            "sensor_ready",
            "gauge",
            "1 once sensor_started was written.",
        );
        sample(
            &mut o,
            "sensor_ready",
            &[],
            u64::from(self.ready.load(Relaxed)),
        );
        family(
            &mut o,
            "sensor_uptime_seconds",
            "gauge",
            "Seconds since the sensor started.",
        );
        sample(
            &mut o,
            "sensor_uptime_seconds",
            &[],
            self.started.elapsed().as_secs(),
        );
        family(
            &mut o,
            "sensor_events_total",
            "counter",
            "Kernel events read from the ring buffer, by kind.",
        );
        for (k, v) in &s.events {
            sample(&mut o, "sensor_events_total", &[("kind", k)], *v);
        }
        family(
            &mut o,
            "sensor_records_total",
            "counter",
            "Records written, by kind.",
        );
        for (k, v) in &s.records {
            sample(&mut o, "sensor_records_total", &[("kind", k)], *v);
        }
        family(
            &mut o,
            "sensor_drops_total",
            "counter",
            "Events or records lost, by reason (as in sensor_stats.drops).",
        );
        for (k, v) in &s.drops {
            sample(&mut o, "sensor_drops_total", &[("reason", k)], *v);
        }
        let count = |k: &str| s.records.get(k).copied().unwrap_or(0);
        family(
            &mut o,
            "sensor_builds_total",
            "counter",
            "Image builds seen, by phase (build_started, build_finished records).",
        );
        sample(
            &mut o,
            "sensor_builds_total",
            &[("phase", "started")],
            count("build_started"),
        );
        sample(
            &mut o,
            "sensor_builds_total",
            &[("phase", "finished")],
            count("build_finished"),
        );
        family(
            &mut o,
            "sensor_findings_total",
            "counter",
            "Finding records written.",
        );
        sample(&mut o, "sensor_findings_total", &[], count("finding"));
        family(
            &mut o,
            "sensor_ringbuf_size_bytes",
            "gauge",
            "Size of the kernel ring buffer.",
        );
        sample(
            &mut o,
            "sensor_ringbuf_size_bytes",
            &[],
            s.ringbuf_size_bytes,
        );
        family(
            &mut o,
            "sensor_ringbuf_read_bytes_total",
            "counter",
            "Bytes read from the ring buffer.",
        );
        sample(
            &mut o,
            "sensor_ringbuf_read_bytes_total",
            &[],
            s.ringbuf_bytes,
        );
        family(
            &mut o,
            "sensor_ringbuf_batches_total",
            "counter",
            "Reader wake-ups (each drains all that is pending).",
        );
        sample(
            &mut o,
            "sensor_ringbuf_batches_total",
            &[],
            s.ringbuf_batches,
        );
        family(
            &mut o,
            "sensor_ringbuf_last_batch_bytes",
            "gauge",
            "Bytes drained in the last wake-up: how full the buffer was.",
        );
        sample(
            &mut o,
            "sensor_ringbuf_last_batch_bytes",
            &[],
            s.ringbuf_last_batch_bytes,
        );
        family(
            &mut o,
            "sensor_ringbuf_max_pending_bytes",
            "gauge",
            "Peak ring-buffer fill since start: most bytes waiting to be read when an event was produced.",
        );
        sample(
            &mut o,
            "sensor_ringbuf_max_pending_bytes",
            &[],
            s.ringbuf_max_pending_bytes,
        );
        family(
            &mut o,
            "sensor_ringbuf_max_batch_bytes",
            "gauge",
            "Most bytes drained in one wake-up: a lower bound of the peak fill.",
        );
        sample(
            &mut o,
            "sensor_ringbuf_max_batch_bytes",
            &[],
            s.ringbuf_max_batch_bytes,
        );
        family(
            &mut o,
            "sensor_tracked_processes",
            "gauge",
            "Processes in the kernel's tracked set.",
        );
        sample(&mut o, "sensor_tracked_processes", &[], s.tracked_processes);
        family(
            &mut o,
            "sensor_policy_reloads_total",
            "counter",
            "Policy reloads on SIGHUP, by result.",
        );
        sample(
            &mut o,
            "sensor_policy_reloads_total",
            &[("result", "ok")],
            s.policy_reloads_ok,
        );
        sample(
            &mut o,
            "sensor_policy_reloads_total",
            &[("result", "failed")],
            s.policy_reloads_failed,
        );
        let sinks: &[Arc<SinkStatus>] = &self.sinks;
        family(
            &mut o,
            "sensor_sink_queue_depth",
            "gauge",
            "Records waiting in a sink's queue.",
        );
        for st in sinks {
            sample(
                &mut o,
                "sensor_sink_queue_depth",
                &[("sink", &st.name)],
                st.depth.load(Relaxed),
            );
        }
        family(
            &mut o,
            "sensor_sink_queue_capacity",
            "gauge",
            "Records a sink's queue holds before it drops.",
        );
        for st in sinks {
            sample(
                &mut o,
                "sensor_sink_queue_capacity",
                &[("sink", &st.name)],
                st.capacity as u64,
            );
        }
        family(
            &mut o,
            "sensor_sink_written_total",
            "counter",
            "Records a sink delivered.",
        );
        for st in sinks {
            sample(
                &mut o,
                "sensor_sink_written_total",
                &[("sink", &st.name), ("type", st.type_name)],
                st.written.load(Relaxed),
            );
        }
        family(
            &mut o,
            "sensor_sink_connected",
            "gauge",
            "1 when a stream sink is connected (always 1 for stdout and files).",
        );
        for st in sinks {
            sample(
                &mut o,
                "sensor_sink_connected",
                &[("sink", &st.name)],
                u64::from(st.connected.load(Relaxed)),
            );
        }
        family(
            &mut o,
            "sensor_sink_reconnects_total",
            "counter",
            "Times a stream sink connected again after a failure.",
        );
        for st in sinks {
            sample(
                &mut o,
                "sensor_sink_reconnects_total",
                &[("sink", &st.name)],
                st.reconnects.load(Relaxed),
            );
        }
        o
    }
}

fn family(o: &mut String, name: &str, ty: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {ty}");
}

fn sample(o: &mut String, name: &str, labels: &[(&str, &str)], v: u64) {
    o.push_str(name);
    if !labels.is_empty() {
        o.push('{');
        for (i, (k, val)) in labels.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            let esc = val
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = write!(o, "{k}=\"{esc}\"");
        }
        o.push('}');
    }
    let _ = writeln!(o, " {v}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_format() {
        let m = Metrics::new(Vec::new());
        let mut s = Snapshot::default();
        s.events.insert("process_exec".into(), 3);
        s.records.insert("build_started".into(), 2);
        s.drops.insert("sink_tcp_queue_full".into(), 4);
        m.publish(s);
        let text = m.render();
        assert!(
            text.contains("sensor_events_total{kind=\"process_exec\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("sensor_builds_total{phase=\"started\"} 2\n"));
        assert!(text.contains("sensor_drops_total{reason=\"sink_tcp_queue_full\"} 4\n"));
        assert!(text.contains("sensor_ready 0\n"));
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            assert_eq!(l.split(' ').count(), 2, "{l}");
        }
    }
}
