//! Prometheus text endpoint (`--metrics-addr 127.0.0.1:9464`, off by default) with `/metrics`,
//! `/healthz` and `/readyz`. Served by hand over a tokio listener: a handful of counters does
//! not need an HTTP framework. The event loop publishes a snapshot each second; sink queue
//! depths are read live.
use std::{
    fmt,
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

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, prometheus_text},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::output::{
    record::{Kind, SensorStats},
    sinks::SinkStatus,
};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What the event loop last published: the same counters `sensor_stats` writes, taken once,
/// and the few that only the endpoint shows.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub stats: SensorStats,
    pub reader: ReaderStats,
    pub policy_reloads: PolicyReloads,
}

/// The ring-buffer reader's byte counts (`sensor_stats.ringbuf` has its batches and peaks).
#[derive(Clone, Debug, Default)]
pub struct ReaderStats {
    pub read_bytes: u64,
    pub last_batch_bytes: u64,
}

/// Policy reloads on SIGHUP, by result.
#[derive(Clone, Debug, Default)]
pub struct PolicyReloads {
    pub ok: u64,
    pub failed: u64,
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
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        // Only the method and path matter: they are set even when the head is cut at 4 KiB or
        // has more headers than slots.
        let _ = req.parse(&buf[..n]);
        let (method, target) = (req.method.unwrap_or(""), req.path.unwrap_or(""));
        let path = target.split('?').next().unwrap_or("");
        let (status, ctype, body) = match (method, path) {
            ("GET" | "HEAD", "/metrics") => {
                ("200 OK", prometheus_text::CONTENT_TYPE, self.render())
            }
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

    /// The Prometheus text exposition format (0.0.4), written by `prometheus-client` from the
    /// last snapshot: the values are kept by the event loop, so they are read at scrape time
    /// through a collector rather than mirrored into the crate's own counters.
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape(self.clone())));
        let mut out = String::new();
        // Writing into a String does not fail, and every value is a plain number.
        if let Err(e) = prometheus_text::encode(&mut out, &registry) {
            tracing::warn!("metrics: cannot encode: {e}");
        }
        out
    }
}

/// One scrape of [`Metrics`]. Counter names are given without `_total`: the encoder adds it.
struct Scrape(Metrics);

impl fmt::Debug for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Scrape")
    }
}

type Labels<'a> = &'a [(&'a str, &'a str)];

/// A metric family: its samples, each with its labels.
fn family(
    e: &mut DescriptorEncoder,
    name: &str,
    ty: MetricType,
    help: &str,
    samples: &[(Labels, u64)],
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, ty)?;
    for (labels, v) in samples {
        let sample = m.encode_family(labels)?;
        match ty {
            MetricType::Counter => ConstCounter::new(*v).encode(sample)?,
            _ => ConstGauge::new(*v).encode(sample)?,
        }
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        use MetricType::{Counter, Gauge};
        let m = &self.0;
        let s = m.snapshot.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let e = &mut e;
        family(
            e,
            "sensor_up",
            Gauge,
            "1 while the sensor runs.",
            &[(&[], 1)],
        )?;
        family(
            e,
            "sensor_ready",
            Gauge,
            "1 once sensor_started was written.",
            &[(&[], u64::from(m.ready.load(Relaxed)))],
        )?;
        family(
            e,
            "sensor_uptime_seconds",
            Gauge,
            "Seconds since the sensor started.",
            &[(&[], m.started.elapsed().as_secs())],
        )?;
        for (name, key, help, map) in [
            (
                "sensor_events",
                "kind",
                "Kernel events read from the ring buffer, by kind.",
                &s.stats.events,
            ),
            (
                "sensor_records",
                "kind",
                "Records written, by kind.",
                &s.stats.records,
            ),
            (
                "sensor_drops",
                "reason",
                "Events or records lost, by reason (as in sensor_stats.drops).",
                &s.stats.drops,
            ),
        ] {
            let labels: Vec<[(&str, &str); 1]> = map.keys().map(|k| [(key, k.as_str())]).collect();
            let samples: Vec<(Labels, u64)> = labels
                .iter()
                .zip(map.values())
                .map(|(l, v)| (&l[..], *v))
                .collect();
            family(e, name, Counter, help, &samples)?;
        }
        let count = |k: Kind| s.stats.records.get(<&str>::from(k)).copied().unwrap_or(0);
        family(
            e,
            "sensor_builds",
            Counter,
            "Image builds seen, by phase (build_started, build_finished records).",
            &[
                (&[("phase", "started")], count(Kind::BuildStarted)),
                (&[("phase", "finished")], count(Kind::BuildFinished)),
            ],
        )?;
        family(
            e,
            "sensor_findings",
            Counter,
            "Finding records written.",
            &[(&[], count(Kind::Finding))],
        )?;
        for (name, ty, help, v) in [
            (
                "sensor_ringbuf_size_bytes",
                Gauge,
                "Size of the kernel ring buffer.",
                s.stats.ringbuf.size_bytes,
            ),
            (
                "sensor_ringbuf_read_bytes",
                Counter,
                "Bytes read from the ring buffer.",
                s.reader.read_bytes,
            ),
            (
                "sensor_ringbuf_batches",
                Counter,
                "Reader wake-ups (each drains all that is pending).",
                s.stats.ringbuf.batches,
            ),
            (
                "sensor_ringbuf_last_batch_bytes",
                Gauge,
                "Bytes drained in the last wake-up: how full the buffer was.",
                s.reader.last_batch_bytes,
            ),
            (
                "sensor_ringbuf_max_pending_bytes",
                Gauge,
                "Peak ring-buffer fill since start: most bytes waiting to be read when an event was produced.",
                s.stats.ringbuf.max_pending_bytes,
            ),
            (
                "sensor_ringbuf_max_batch_bytes",
                Gauge,
                "Most bytes drained in one wake-up: a lower bound of the peak fill.",
                s.stats.ringbuf.max_batch_bytes,
            ),
            (
                "sensor_tracked_processes",
                Gauge,
                "Processes in the kernel's tracked set.",
                s.stats.tracked_processes,
            ),
        ] {
            family(e, name, ty, help, &[(&[], v)])?;
        }
        family(
            e,
            "sensor_policy_reloads",
            Counter,
            "Policy reloads on SIGHUP, by result.",
            &[
                (&[("result", "ok")], s.policy_reloads.ok),
                (&[("result", "failed")], s.policy_reloads.failed),
            ],
        )?;
        let sinks: &[Arc<SinkStatus>] = &m.sinks;
        let names: Vec<[(&str, &str); 1]> = sinks
            .iter()
            .map(|st| [("sink", st.name.as_str())])
            .collect();
        let typed: Vec<[(&str, &str); 2]> = sinks
            .iter()
            .map(|st| [("sink", st.name.as_str()), ("type", st.type_name)])
            .collect();
        let per_sink = |f: &dyn Fn(&SinkStatus) -> u64| -> Vec<(Labels, u64)> {
            names
                .iter()
                .zip(sinks)
                .map(|(l, st)| (&l[..], f(st)))
                .collect()
        };
        family(
            e,
            "sensor_sink_queue_depth",
            Gauge,
            "Records waiting in a sink's queue.",
            &per_sink(&|st| st.depth.load(Relaxed)),
        )?;
        family(
            e,
            "sensor_sink_queue_capacity",
            Gauge,
            "Records a sink's queue holds before it drops.",
            &per_sink(&|st| st.capacity as u64),
        )?;
        let written: Vec<(Labels, u64)> = typed
            .iter()
            .zip(sinks)
            .map(|(l, st)| (&l[..], st.written.load(Relaxed)))
            .collect();
        family(
            e,
            "sensor_sink_written",
            Counter,
            "Records a sink delivered.",
            &written,
        )?;
        family(
            e,
            "sensor_sink_connected",
            Gauge,
            "1 when a stream sink is connected (always 1 for stdout and files).",
            &per_sink(&|st| u64::from(st.connected.load(Relaxed))),
        )?;
        family(
            e,
            "sensor_sink_reconnects",
            Counter,
            "Times a stream sink connected again after a failure.",
            &per_sink(&|st| st.reconnects.load(Relaxed)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_format() {
        let m = Metrics::new(Vec::new());
        let mut s = Snapshot::default();
        s.stats.events.insert("process_exec".into(), 3);
        s.stats.records.insert("build_started".into(), 2);
        s.stats.drops.insert("sink_tcp_queue_full".into(), 4);
        m.publish(s);
        let text = m.render();
        assert!(
            text.contains("sensor_events_total{kind=\"process_exec\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("sensor_builds_total{phase=\"started\"} 2\n"));
        assert!(text.contains("sensor_drops_total{reason=\"sink_tcp_queue_full\"} 4\n"));
        assert!(text.contains("sensor_ready 0\n"));
        assert!(text.contains("# HELP sensor_events_total Kernel events read from the ring buffer, by kind.\n# TYPE sensor_events_total counter\n"), "{text}");
        assert!(text.contains("# TYPE sensor_ringbuf_read_bytes_total counter\nsensor_ringbuf_read_bytes_total 0\n"), "{text}");
        assert!(
            text.contains("# TYPE sensor_ringbuf_size_bytes gauge\nsensor_ringbuf_size_bytes 0\n"),
            "{text}"
        );
        assert!(text.contains("sensor_policy_reloads_total{result=\"failed\"} 0\n"));
        // Every sample belongs to the family declared before it, once, and has one value.
        let mut declared = std::collections::HashSet::new();
        let mut current = "";
        for l in text.lines() {
            if let Some(t) = l.strip_prefix("# TYPE ") {
                current = t.split(' ').next().unwrap();
                assert!(declared.insert(current), "{current} twice");
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                assert_eq!(name, current, "{l}");
                assert!(l.rsplit(" ").next().unwrap().parse::<u64>().is_ok(), "{l}");
            }
        }
        assert_eq!(declared.len(), 21, "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new(Vec::new());
        let mut s = Snapshot::default();
        s.stats.drops.insert("a\"b\\c\nd".into(), 1);
        m.publish(s);
        assert!(
            m.render()
                .contains("sensor_drops_total{reason=\"a\\\"b\\\\c\\nd\"} 1\n"),
            "{}",
            m.render()
        );
    }
}
