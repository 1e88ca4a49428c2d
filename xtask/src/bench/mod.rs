//! `cargo xtask bench`: the sensor's overhead, measured in one run.
//!
//! Four workloads: an exec storm (fork+exec of /bin/true) and a loopback TCP connect storm,
//! each run outside any tracked runtime tree and inside one. "Inside" means the storm driver
//! (`cargo xtask storm`, this binary) runs through a symlink named `bench-runtime`, a name the
//! sensor is told to track (`--runtime-name bench-runtime`), so the driver and every child it
//! forks are in a tracked tree.
//!
//! Each repetition runs the four workloads without the sensor and with it, alternating which
//! comes first so that drift on a shared machine hits both sides alike; the report uses
//! medians. Around each storm with the sensor the bench waits for fresh `sensor_stats` records
//! to count the events and drops the storm caused.

mod report;
mod sensor;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;

use crate::cmd;
use sensor::{SensorRun, SensorSummary, lost, sum_counters};

#[derive(Args)]
pub struct BenchArgs {
    /// fork+exec of /bin/true per exec storm.
    #[arg(long, default_value_t = 5000)]
    pub execs: u32,
    /// TCP connects per connect storm (keep under the ephemeral port range, ~28,000).
    #[arg(long, default_value_t = 20000)]
    pub connects: u32,
    /// Alternating repetitions of every workload, with and without the sensor.
    #[arg(long, default_value_t = 5)]
    pub reps: u32,
    /// Name of the symlink the tracked storms run through (passed as --runtime-name).
    #[arg(long, default_value = "bench-runtime")]
    pub runtime_name: String,
    /// After the timed storms, with the sensor only: this many tracked connect storms at
    /// once, to see whether the sensor keeps up with a higher event rate (0 or 1: none).
    #[arg(long, default_value_t = 2)]
    pub burst: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Exec,
    Connect,
}

#[derive(Clone, Copy)]
pub struct Case {
    pub workload: Workload,
    pub tracked: bool,
}

pub const CASES: [Case; 4] = [
    Case {
        workload: Workload::Exec,
        tracked: false,
    },
    Case {
        workload: Workload::Exec,
        tracked: true,
    },
    Case {
        workload: Workload::Connect,
        tracked: false,
    },
    Case {
        workload: Workload::Connect,
        tracked: true,
    },
];

/// How long to wait for the next `sensor_stats` record (written every second); without them
/// the timings still count.
const STATS_TIMEOUT: Duration = Duration::from_secs(5);

/// One storm as its driver timed it.
#[derive(Clone, Copy)]
pub struct StormTiming {
    /// Wall-clock seconds of the loop.
    pub wall: f64,
    /// CPU seconds (user+system) of the driver and its children meanwhile: far less sensitive
    /// than wall time to other work on a shared machine.
    pub cpu: f64,
}

/// What the sensor's periodic stats said about one storm.
#[derive(Clone, Copy)]
pub struct StormCounts {
    pub events: u64,
    pub drops: u64,
    pub seconds: f64,
}

impl StormCounts {
    pub fn events_per_s(&self) -> f64 {
        self.events as f64 / self.seconds
    }
}

/// Everything measured; `report` turns it into the table.
pub struct Measurements {
    pub args_execs: u32,
    pub args_connects: u32,
    pub reps: u32,
    /// Storm timings, per case (index into CASES).
    pub without: [Vec<StormTiming>; 4],
    pub with: [Vec<StormTiming>; 4],
    /// Per case, for storms with the sensor whose stats were readable.
    pub counts: [Vec<StormCounts>; 4],
    /// Concurrent tracked connect storms, one per sensor run (with --burst > 1).
    pub bursts: Vec<StormCounts>,
    pub burst_procs: u32,
    pub sensors: Vec<SensorSummary>,
    /// True if a later stats record had lower totals than an earlier one (per-interval
    /// counters rather than totals): event and drop deltas are then not meaningful.
    pub stats_not_cumulative: bool,
    pub load_before: String,
    pub load_after: String,
    /// Pids of other `sensor` processes seen during the bench: their probes slow down the
    /// "without sensor" runs too, so the slowdowns understate the cost.
    pub other_sensors: BTreeSet<u32>,
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    if args.reps == 0 || args.execs == 0 || args.connects == 0 {
        bail!("--reps, --execs and --connects must be at least 1");
    }
    let built = crate::tasks::build(true)?;
    let out_dir = cmd::target_dir().join("bench");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    // Private copies: others rebuilding target/ in the same tree mid-bench must not swap the
    // binaries between repetitions.
    let sensor_bin = copy_executable(&built, &out_dir.join("sensor"))?;
    let drivers = Drivers::new(&out_dir, &args.runtime_name)?;

    eprintln!("bench: warm-up");
    drivers.storm(
        Case {
            workload: Workload::Exec,
            tracked: false,
        },
        args.execs.min(200),
    )?;
    drivers.storm(
        Case {
            workload: Workload::Connect,
            tracked: false,
        },
        args.connects.min(1000),
    )?;

    let mut m = Measurements {
        args_execs: args.execs,
        args_connects: args.connects,
        reps: args.reps,
        without: Default::default(),
        with: Default::default(),
        counts: Default::default(),
        bursts: Vec::new(),
        burst_procs: args.burst,
        sensors: Vec::new(),
        stats_not_cumulative: false,
        load_before: loadavg(),
        load_after: String::new(),
        other_sensors: BTreeSet::new(),
    };

    for rep in 0..args.reps {
        let sensor_first = rep % 2 == 1;
        for with_sensor in [sensor_first, !sensor_first] {
            let label = if with_sensor {
                "with sensor"
            } else {
                "without sensor"
            };
            eprintln!("bench: repetition {}/{}, {label}", rep + 1, args.reps);
            let others = other_sensors();
            if !others.is_empty() {
                eprintln!("bench:   warning: other sensor processes are running: {others:?}");
            }
            m.other_sensors.extend(others);
            if with_sensor {
                let summary = measure_with_sensor(args, &drivers, &sensor_bin, &out_dir, &mut m)?;
                m.sensors.push(summary);
            } else {
                for (i, case) in CASES.iter().enumerate() {
                    let t = drivers.storm(*case, count(args, case))?;
                    eprintln!("bench:   {}", timing_line(case, &t));
                    m.without[i].push(t);
                }
            }
        }
    }
    m.load_after = loadavg();

    let table = report::markdown(&m);
    let results = out_dir.join("results.md");
    fs::write(&results, &table).with_context(|| format!("writing {}", results.display()))?;
    println!("{table}");
    for line in report::verdicts(&m) {
        println!("{line}");
    }
    println!("\n(written to {})", results.display());
    Ok(())
}

fn count(args: &BenchArgs, case: &Case) -> u32 {
    match case.workload {
        Workload::Exec => args.execs,
        Workload::Connect => args.connects,
    }
}

/// One sensor run: start it, run the four storms, counting events and drops around each from
/// its periodic stats, then stop it.
fn measure_with_sensor(
    args: &BenchArgs,
    drivers: &Drivers,
    sensor_bin: &Path,
    out_dir: &Path,
    m: &mut Measurements,
) -> Result<SensorSummary> {
    let index = m.sensors.len();
    let mut run = SensorRun::start(sensor_bin, &args.runtime_name, out_dir, index)?;
    eprintln!("bench:   sensor started (pid {})", run.pid());
    let mut before = match run.next_stats(STATS_TIMEOUT) {
        Ok(stats) => Some(stats),
        Err(e) => {
            eprintln!("bench:   no sensor_stats record to count events with: {e:#}");
            None
        }
    };
    for (i, case) in CASES.iter().enumerate() {
        let t = drivers.storm(*case, count(args, case))?;
        m.with[i].push(t);
        let mut line = format!("bench:   {}", timing_line(case, &t));
        if let Some(counts) = counts_since(&mut run, &mut before, t.wall, m) {
            line += &counts_text(&counts);
            m.counts[i].push(counts);
        }
        eprintln!("{line}");
    }
    if args.burst > 1 {
        // Not timed against a baseline: only how many events/s the sensor takes without loss
        // when several tracked processes connect at once.
        let wall = drivers.burst(args.burst, args.connects)?;
        let mut line = format!(
            "bench:   {:<28} {wall:7.3} s",
            format!("burst, {} tracked storms", args.burst)
        );
        if let Some(counts) = counts_since(&mut run, &mut before, wall, m) {
            line += &counts_text(&counts);
            m.bursts.push(counts);
        }
        eprintln!("{line}");
    }
    let summary = run.stop()?;
    eprintln!(
        "bench:   sensor stopped: {:.2} s CPU over {:.1} s, peak RSS {:.1} MiB, drops at exit: {}",
        summary.window_cpu_s,
        summary.window_wall_s,
        summary.peak_rss as f64 / (1024.0 * 1024.0),
        lost(summary.final_stats.as_ref()).map_or_else(|| "unknown".to_owned(), |d| d.to_string()),
    );
    Ok(summary)
}

/// Counts of the storm that just ended: from the stats record taken before it to one surely
/// written after it (the first new record may have been taken during the storm: wait for two).
fn counts_since(
    run: &mut SensorRun,
    before: &mut Option<Value>,
    seconds: f64,
    m: &mut Measurements,
) -> Option<StormCounts> {
    let prev = before.take()?;
    let after = run
        .next_stats(STATS_TIMEOUT)
        .and_then(|_| run.next_stats(STATS_TIMEOUT));
    match after {
        Ok(after) => {
            let counts = storm_counts(&prev, &after, seconds, &mut m.stats_not_cumulative);
            *before = Some(after);
            Some(counts)
        }
        Err(e) => {
            eprintln!("bench:   sensor_stats stopped coming: {e:#}");
            None
        }
    }
}

fn counts_text(c: &StormCounts) -> String {
    format!(
        "  {} events ({:.0}/s), {} drops",
        c.events,
        c.events_per_s(),
        c.drops
    )
}

fn storm_counts(
    before: &Value,
    after: &Value,
    seconds: f64,
    not_cumulative: &mut bool,
) -> StormCounts {
    let mut delta = |b: Option<u64>, a: Option<u64>| {
        let (b, a) = (b.unwrap_or(0), a.unwrap_or(0));
        if a < b {
            *not_cumulative = true;
        }
        a.saturating_sub(b)
    };
    StormCounts {
        events: delta(
            sum_counters(before.get("events")),
            sum_counters(after.get("events")),
        ),
        drops: delta(lost(Some(before)), lost(Some(after))),
        seconds,
    }
}

/// Copy a binary (replacing any earlier copy, which may be running) and return the copy's path.
fn copy_executable(from: &Path, to: &Path) -> Result<PathBuf> {
    if fs::symlink_metadata(to).is_ok() {
        fs::remove_file(to).with_context(|| format!("removing {}", to.display()))?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(to.to_path_buf())
}

/// The storm driver (a copy of this binary) under its own name and under the tracked runtime
/// name.
struct Drivers {
    untracked: PathBuf,
    tracked: PathBuf,
}

impl Drivers {
    fn new(out_dir: &Path, runtime_name: &str) -> Result<Self> {
        let current = std::env::current_exe().context("locating the xtask binary")?;
        let exe = copy_executable(&current, &out_dir.join("storm-driver"))?;
        let link = out_dir.join(runtime_name);
        if fs::symlink_metadata(&link).is_ok() {
            fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
        }
        symlink(&exe, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), exe.display()))?;
        Ok(Self {
            untracked: exe,
            tracked: link,
        })
    }

    /// Run `procs` tracked connect storms at once; returns the longest loop, in seconds.
    fn burst(&self, procs: u32, count: u32) -> Result<f64> {
        let children = (0..procs)
            .map(|_| {
                Command::new(&self.tracked)
                    .args(["storm", "connect", &count.to_string()])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .context("starting a burst storm")
            })
            .collect::<Result<Vec<_>>>()?;
        let mut longest: f64 = 0.0;
        for child in children {
            let out = child
                .wait_with_output()
                .context("waiting for a burst storm")?;
            if !out.status.success() {
                bail!("a burst storm failed ({})", out.status);
            }
            longest = longest.max(parse_timing(&String::from_utf8_lossy(&out.stdout))?.wall);
        }
        Ok(longest)
    }

    /// Run one storm; returns the driver's own timing of its loop.
    fn storm(&self, case: Case, count: u32) -> Result<StormTiming> {
        let driver = if case.tracked {
            &self.tracked
        } else {
            &self.untracked
        };
        let kind = match case.workload {
            Workload::Exec => "exec",
            Workload::Connect => "connect",
        };
        let mut storm = Command::new(driver);
        storm
            .args(["storm", kind, &count.to_string()])
            .stderr(Stdio::inherit());
        parse_timing(&cmd::output(&mut storm)?)
    }
}

/// The storm driver's `WALL_NS CPU_NS` line.
fn parse_timing(out: &str) -> Result<StormTiming> {
    let nanos: Vec<u64> = out
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    match nanos[..] {
        [wall, cpu] => Ok(StormTiming {
            wall: wall as f64 / 1e9,
            cpu: cpu as f64 / 1e9,
        }),
        _ => bail!("the storm driver printed {out:?}, not `WALL_NS CPU_NS`"),
    }
}

fn timing_line(case: &Case, t: &StormTiming) -> String {
    format!(
        "{:<28} {:7.3} s ({:.3} s CPU)",
        report::case_name(case),
        t.wall,
        t.cpu
    )
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Pids of processes named `sensor` (other engineers' or tests' instances), bar our own runs,
/// which are never alive when this is called.
fn other_sensors() -> BTreeSet<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sensor")
        })
        .collect()
}
