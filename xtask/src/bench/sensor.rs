//! The sensor under measurement: started with stdout to a file, its NDJSON records followed
//! for `sensor_started` and `sensor_stats`, its CPU time and peak RSS read from /proc, stopped
//! with SIGTERM (it writes a final `sensor_stats` then).

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

const START_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);
const SETTLE: Duration = Duration::from_secs(2);

/// CPU time and memory of the sensor process, from /proc.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcUsage {
    /// utime + stime, seconds.
    pub cpu_s: f64,
    /// VmHWM, bytes.
    pub peak_rss: u64,
}

/// What one sensor run left behind.
pub struct SensorSummary {
    /// CPU time spent until `sensor_started` (loading programs, seeding the process table).
    pub startup_cpu_s: f64,
    /// CPU time from `sensor_started` until just before SIGTERM, and the wall time it covers.
    pub window_cpu_s: f64,
    pub window_wall_s: f64,
    pub peak_rss: u64,
    /// The `sensor_stats` record written at exit (None if it wrote none).
    pub final_stats: Option<Value>,
}

pub struct SensorRun {
    child: Child,
    records: Records,
    stderr_path: PathBuf,
    startup_cpu_s: f64,
    started_at: Instant,
}

impl SensorRun {
    /// Start `sensor run --runtime-name NAME --stats-interval 1` (with SENSOR_SKIP_PROBES set
    /// to `skip_probes`, which may be empty, SENSOR_IDLE_PROBES=1 when `idle`, and
    /// SENSOR_BENCH_SWITCH when `switch` names its socket) and wait for `sensor_started`.
    pub fn start(
        bin: &Path,
        runtime_name: &str,
        skip_probes: &str,
        (idle, switch): (bool, Option<&Path>),
        out_dir: &Path,
        index: usize,
    ) -> Result<Self> {
        let stdout_path = out_dir.join(format!("sensor-{index}.ndjson"));
        let stderr_path = out_dir.join(format!("sensor-{index}.stderr"));
        let stdout = File::create(&stdout_path)
            .with_context(|| format!("creating {}", stdout_path.display()))?;
        let stderr = File::create(&stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        let mut command = Command::new(bin);
        if let Some(path) = switch {
            command.env("SENSOR_BENCH_SWITCH", path);
        }
        let child = command
            .args([
                "run",
                "--runtime-name",
                runtime_name,
                "--stats-interval",
                "1",
            ])
            .env("SENSOR_SKIP_PROBES", skip_probes)
            .env("SENSOR_IDLE_PROBES", if idle { "1" } else { "0" })
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut run = SensorRun {
            child,
            records: Records::open(&stdout_path)?,
            stderr_path,
            startup_cpu_s: 0.0,
            started_at: Instant::now(),
        };
        run.wait_for(START_TIMEOUT, |r| kind(r) == Some("sensor_started"))
            .context("waiting for the sensor's sensor_started record")?;
        run.startup_cpu_s = proc_usage(run.pid())?.cpu_s;
        // What a start leaves the kernel to finish (the previous run's maps freed in its
        // workqueues, the new ring buffer's pages) is not the steady state a node's sensor
        // runs in; the storms start after it.
        thread::sleep(SETTLE);
        run.started_at = Instant::now();
        Ok(run)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next `sensor_stats` record written after the records read so far.
    pub fn next_stats(&mut self, timeout: Duration) -> Result<Value> {
        self.wait_for(timeout, |r| kind(r) == Some("sensor_stats"))
    }

    fn wait_for(&mut self, timeout: Duration, wanted: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            for record in self.records.read_new()? {
                if wanted(&record) {
                    return Ok(record);
                }
            }
            if let Some(status) = self.child.try_wait().context("checking on the sensor")? {
                bail!("the sensor exited ({status}); {}", self.stderr_tail());
            }
            if Instant::now() >= deadline {
                bail!(
                    "no such record within {} s; {}",
                    timeout.as_secs(),
                    self.stderr_tail()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Read usage, SIGTERM, wait for exit, return the summary with the final stats record.
    pub fn stop(mut self) -> Result<SensorSummary> {
        let usage = proc_usage(self.pid())?;
        let window_wall_s = self.started_at.elapsed().as_secs_f64();
        signal(self.pid(), libc::SIGTERM)?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().context("waiting for the sensor")? {
                break status;
            }
            if Instant::now() >= deadline {
                bail!(
                    "the sensor did not exit within {} s of SIGTERM; {}",
                    STOP_TIMEOUT.as_secs(),
                    self.stderr_tail()
                );
            }
            thread::sleep(POLL);
        };
        if !status.success() {
            eprintln!(
                "bench: the sensor exited with {status} after SIGTERM; {}",
                self.stderr_tail()
            );
        }
        // The record written at exit says `"final_report": true`; else take the last one.
        let stats: Vec<Value> = self
            .records
            .read_new()?
            .into_iter()
            .filter(|r| kind(r) == Some("sensor_stats"))
            .collect();
        let final_stats = stats
            .iter()
            .rfind(|r| r.get("final_report").and_then(Value::as_bool) == Some(true))
            .or(stats.last())
            .cloned();
        if final_stats.is_none() {
            eprintln!("bench: the sensor wrote no sensor_stats record at exit");
        }
        Ok(SensorSummary {
            startup_cpu_s: self.startup_cpu_s,
            window_cpu_s: usage.cpu_s - self.startup_cpu_s,
            window_wall_s,
            peak_rss: usage.peak_rss,
            final_stats,
        })
    }

    fn stderr_tail(&self) -> String {
        let text = fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        if tail.is_empty() {
            format!("its stderr ({}) is empty", self.stderr_path.display())
        } else {
            format!(
                "last lines of its stderr ({}):\n{tail}",
                self.stderr_path.display()
            )
        }
    }
}

impl Drop for SensorRun {
    /// A bench that fails half-way must not leave the sensor attached.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = signal(self.pid(), libc::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                thread::sleep(POLL);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn signal(pid: u32, sig: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: kill(2) on our own child, which has not been reaped (we hold its Child).
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(std::io::Error::last_os_error()).context("signalling the sensor");
    }
    Ok(())
}

fn kind(record: &Value) -> Option<&str> {
    record.get("kind").and_then(Value::as_str)
}

/// The sensor's NDJSON stdout, read incrementally. Only the records the bench cares about are
/// parsed: the storms write tens of megabytes of event records.
struct Records {
    reader: BufReader<File>,
    partial: Vec<u8>,
}

impl Records {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Self {
            reader: BufReader::with_capacity(1 << 20, file),
            partial: Vec::new(),
        })
    }

    fn read_new(&mut self) -> Result<Vec<Value>> {
        let mut found = Vec::new();
        loop {
            let n = self
                .reader
                .read_until(b'\n', &mut self.partial)
                .context("reading the sensor's output")?;
            if n == 0 || !self.partial.ends_with(b"\n") {
                // End of what is written so far; a partial line stays for the next call.
                return Ok(found);
            }
            let line = std::mem::take(&mut self.partial);
            if contains(&line, b"\"sensor_started\"") || contains(&line, b"\"sensor_stats\"") {
                match serde_json::from_slice::<Value>(&line) {
                    Ok(record) => found.push(record),
                    Err(e) => eprintln!(
                        "bench: unparsable sensor record ({e}): {}",
                        String::from_utf8_lossy(&line).trim()
                    ),
                }
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// utime+stime and VmHWM of a live process.
pub fn proc_usage(pid: u32) -> Result<ProcUsage> {
    let stat_path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&stat_path).with_context(|| format!("reading {stat_path}"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let after_comm = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("unexpected {stat_path}"))?;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); field 3 (state) is fields[0] here.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("field {} of {stat_path}", i + 3))
    };
    let cpu_ticks = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };

    let status_path = format!("/proc/{pid}/status");
    let status =
        fs::read_to_string(&status_path).with_context(|| format!("reading {status_path}"))?;
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmHWM in {status_path}"))?;

    Ok(ProcUsage {
        cpu_s: cpu_ticks as f64 / hz,
        peak_rss: hwm_kib * 1024,
    })
}

/// Sum of every number under a JSON value (`events` and `drops` are objects of counters, maybe
/// nested by kind or CPU).
pub fn sum_counters(value: Option<&Value>) -> Option<u64> {
    fn sum(v: &Value) -> u64 {
        match v {
            Value::Number(n) => n.as_u64().unwrap_or(0),
            Value::Object(map) => map.values().map(sum).sum(),
            Value::Array(items) => items.iter().map(sum).sum(),
            _ => 0,
        }
    }
    value.map(sum)
}

/// `drops` reasons that count no kernel event lost: records cut short, and a containerd image
/// store the sensor could not read at start (a stale socket of a stopped containerd). Reported,
/// but not as drops: the drop target is about keeping up with events.
pub const NOT_LOST: &[&str] = &["truncated", "containerd_store_unreadable"];

/// Events lost according to a `sensor_stats` record: its `drops` counters bar NOT_LOST.
pub fn lost(stats: Option<&Value>) -> Option<u64> {
    let Some(Value::Object(drops)) = stats.and_then(|s| s.get("drops")) else {
        return None;
    };
    Some(
        drops
            .iter()
            .filter(|(reason, _)| !NOT_LOST.contains(&reason.as_str()))
            .filter_map(|(_, n)| sum_counters(Some(n)))
            .sum(),
    )
}

/// The non-zero counters of an object, as `name=N` (for the drop reasons).
pub fn nonzero_counters(value: Option<&Value>) -> Vec<(String, u64)> {
    let Some(Value::Object(map)) = value else {
        return Vec::new();
    };
    map.iter()
        .filter_map(|(k, v)| {
            let n = sum_counters(Some(v))?;
            (n > 0).then(|| (k.clone(), n))
        })
        .collect()
}
