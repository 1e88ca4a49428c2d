//! `cargo xtask bench`: the sensor's overhead, measured in one run.
//!
//! Six workloads, each run outside any tracked runtime tree and inside one: an exec storm
//! (fork+exec of /bin/true), a loopback TCP connect storm, a read/write storm (`dd
//! if=/dev/zero of=/dev/null bs=1`, in process), open+close of a file, one-byte send/recv on a
//! unix socketpair, and `redis-benchmark -t set,get` against a `redis-server` the driver
//! starts as its child. "Inside" means the storm driver (`cargo xtask storm`, this binary)
//! runs through a symlink named `bench-runtime`, a name the sensor is told to track
//! (`--runtime-name bench-runtime`), so the driver and every child it forks are in a tracked
//! tree. What untracked processes pay is the cost the node's databases and proxies see.
//!
//! Each repetition runs every storm without the sensor and, right before or after it (the
//! order alternates), with a sensor started for that storm alone, so that this VM's drift
//! over tens of seconds hits both sides of a pair alike; the report takes the median of the
//! pairs' ratios. Around each storm with the sensor the bench waits for fresh `sensor_stats`
//! records to count the events and drops the storm caused. Then, per case, one more sensor
//! run whose programs the storm driver switches between storms of tens of milliseconds
//! (SENSOR_BENCH_SWITCH: working and idle, then idle and detached), which resolves a few
//! percent where the whole-run pairs, seconds apart, do not; the targets are judged on it
//! (report.rs). With `--peers`, the untracked read/write and open/close storms then run under
//! auditd with the CIS Docker rules, paired with bare runs the same way (peers.rs).

mod hooks;
mod peers;
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
    /// fork+exec of /bin/true per exec storm (0: skip the exec storms).
    #[arg(long, default_value_t = 5000)]
    pub execs: u32,
    /// TCP connects per connect storm (keep under the ephemeral port range, ~28,000; 0: skip).
    #[arg(long, default_value_t = 20000)]
    pub connects: u32,
    /// One-byte read+write pairs per read/write storm, like `dd bs=1 count=N` (0: skip).
    #[arg(long, default_value_t = 1_000_000)]
    pub read_writes: u32,
    /// open+close pairs per open/close storm (0: skip).
    #[arg(long, default_value_t = 100_000)]
    pub opens: u32,
    /// One-byte send+recv pairs per unix socketpair storm (0: skip).
    #[arg(long, default_value_t = 100_000)]
    pub unix_messages: u32,
    /// Requests per redis-benchmark test (`-n`; SET then GET, about 2 s in all here; 0: skip).
    #[arg(long, default_value_t = 30_000)]
    pub redis_requests: u32,
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
    /// Optional probes the sensor leaves detached in its runs (its SENSOR_SKIP_PROBES, e.g.
    /// `sys_enter,sys_exit`), to see what each hook costs; named in the report.
    #[arg(long, env = "SENSOR_SKIP_PROBES", default_value = "")]
    pub skip_probes: String,
    /// After the timed runs, one more sensor run with the kernel's BPF run-time statistics
    /// on, every storm once: runs and nanoseconds per run of each of the sensor's programs.
    #[arg(long)]
    pub hook_stats: bool,
    /// Also run the untracked read/write and open/close storms under auditd with the CIS
    /// Docker audit rules (xtask/src/bench/cis-docker.rules), as another column. Needs the
    /// Debian package auditd and no other audit daemon running.
    #[arg(long)]
    pub peers: bool,
    /// Also run the untracked storms with the sensor's kernel programs attached but idle
    /// (SENSOR_IDLE_PROBES=1: each returns at its first check), alternating with bare runs,
    /// as another column: the kernel's price for the attachment, before any program work.
    #[arg(long)]
    pub floor: bool,
    /// Pairs of short storms per case in the interleaved columns (0: none): one sensor run per
    /// case whose programs the storm driver switches between storms, working and idle, then
    /// idle and detached (SENSOR_BENCH_SWITCH), so that both sides of a pair run within
    /// milliseconds of each other.
    #[arg(long, default_value_t = 100)]
    pub interleave_pairs: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Workload {
    Exec,
    Connect,
    ReadWrite,
    OpenClose,
    UnixPair,
    Redis,
}

impl Workload {
    pub const ALL: [Workload; 6] = [
        Workload::Exec,
        Workload::Connect,
        Workload::ReadWrite,
        Workload::OpenClose,
        Workload::UnixPair,
        Workload::Redis,
    ];

    /// The storm driver's name for it (`cargo xtask storm NAME N`).
    fn storm_arg(self) -> &'static str {
        match self {
            Workload::Exec => "exec",
            Workload::Connect => "connect",
            Workload::ReadWrite => "read-write",
            Workload::OpenClose => "open-close",
            Workload::UnixPair => "unix-pair",
            Workload::Redis => "redis",
        }
    }

    fn count(self, args: &BenchArgs) -> u32 {
        match self {
            Workload::Exec => args.execs,
            Workload::Connect => args.connects,
            Workload::ReadWrite => args.read_writes,
            Workload::OpenClose => args.opens,
            Workload::UnixPair => args.unix_messages,
            Workload::Redis => args.redis_requests,
        }
    }

    /// A short run before the measured ones (page cache, binaries, redis's first start).
    fn warm_up_count(self, args: &BenchArgs) -> u32 {
        let cap = match self {
            Workload::Exec => 200,
            Workload::Connect => 1000,
            Workload::ReadWrite | Workload::OpenClose | Workload::UnixPair => 20_000,
            Workload::Redis => 2000,
        };
        self.count(args).min(cap)
    }

    /// The count of one storm in the interleaved columns: tens of milliseconds, short enough
    /// for both sides of a pair to run at one of this VM's speeds (it changes by 10-40 %
    /// every fraction of a second to few seconds).
    fn interleave_count(self) -> u32 {
        match self {
            Workload::Exec => 20,
            Workload::Connect => 300,
            Workload::ReadWrite => 20_000,
            Workload::OpenClose | Workload::UnixPair => 2000,
            Workload::Redis => 4000,
        }
    }

    /// Measured as requests per second (higher is better) rather than time.
    pub fn is_throughput(self) -> bool {
        self == Workload::Redis
    }
}

#[derive(Clone, Copy)]
pub struct Case {
    pub workload: Workload,
    pub tracked: bool,
    /// The workload's count (fork+execs, connects, ... requests per test).
    pub count: u32,
}

/// How long to wait for the next `sensor_stats` record (written every second); without them
/// the timings still count.
const STATS_TIMEOUT: Duration = Duration::from_secs(5);

/// One storm as its driver timed it.
#[derive(Clone)]
pub struct StormTiming {
    /// Wall-clock seconds of the loop.
    pub wall: f64,
    /// CPU seconds (user+system) of the driver and its children meanwhile: far less sensitive
    /// than wall time to other work on a shared machine.
    pub cpu: f64,
    /// Requests per second by test (redis: `SET`, `GET`); empty for the other storms.
    pub throughput: Vec<(String, f64)>,
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

/// Every run of one case.
pub struct CaseResults {
    pub case: Case,
    pub without: Vec<StormTiming>,
    pub with: Vec<StormTiming>,
    /// For storms with the sensor whose stats were readable.
    pub counts: Vec<StormCounts>,
    /// Under auditd without the sensor, and bare runs alternating with those (`--peers`;
    /// untracked read/write and open/close only).
    pub auditd: Vec<StormTiming>,
    pub auditd_bare: Vec<StormTiming>,
    /// With the sensor's programs idle, and bare runs alternating with those (`--floor`;
    /// untracked storms only).
    pub floor: Vec<StormTiming>,
    pub floor_bare: Vec<StormTiming>,
    /// Interleaved pairs (`--interleave-pairs`): the programs working and idle, and idle and
    /// detached, each pair one right after the other in one sensor run.
    pub work: Vec<[StormTiming; 2]>,
    pub dispatch: Vec<[StormTiming; 2]>,
}

/// Everything measured; `report` turns it into the table.
pub struct Measurements {
    pub cases: Vec<CaseResults>,
    pub reps: u32,
    /// `git rev-parse --short HEAD`, `-dirty` when the tracked files differ from it.
    pub commit: String,
    /// The sensor's SENSOR_SKIP_PROBES (empty: every probe attached).
    pub skip_probes: String,
    /// Concurrent tracked connect storms, one per sensor run (with --burst > 1).
    pub bursts: Vec<StormCounts>,
    pub burst_procs: u32,
    pub burst_connects: u32,
    pub sensors: Vec<SensorSummary>,
    /// `--hook-stats`: per storm, what each of the sensor's programs did, or why not measured.
    pub hook_costs: Option<Result<Vec<hooks::HookCost>, String>>,
    /// The `--peers` column: what ran and how, or why it did not.
    pub peers: Option<Result<String, String>>,
    /// The `--floor` column: measured, or why not.
    pub floor: Option<Result<(), String>>,
    /// The interleaved columns: measured, or why not.
    pub interleave: Option<Result<(), String>>,
    pub interleave_pairs: u32,
    /// True if a later stats record had lower totals than an earlier one (per-interval
    /// counters rather than totals): event and drop deltas are then not meaningful.
    pub stats_not_cumulative: bool,
    pub load_before: String,
    pub load_after: String,
    /// Pids of other `sensor` processes seen during the bench: their probes slow down the
    /// "without sensor" runs too, so the slowdowns understate the cost.
    pub other_sensors: BTreeSet<u32>,
    /// The API server running through every sensor run (each seeds it and puts its uprobes
    /// in), or why there is none.
    pub api_server: Result<String, String>,
}

/// An idle `podman system service` for the whole bench: a node's sensor always meets an API
/// server at its start, and finds the Go function in its binary (podman's is stripped, so
/// its function table is scanned), which the peak RSS includes. Killed when dropped.
struct ApiServer(std::process::Child);

impl ApiServer {
    fn start(out_dir: &Path) -> Result<(ApiServer, String)> {
        let socket = out_dir.join("podman.sock");
        let _ = fs::remove_file(&socket);
        let child = Command::new("podman")
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting podman system service (cargo xtask setup installs podman)")?;
        let server = ApiServer(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            if std::time::Instant::now() > deadline {
                bail!("podman system service made no socket within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let label = format!("podman system service (pid {})", server.0.id());
        Ok((server, label))
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    if args.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let cases: Vec<Case> = Workload::ALL
        .iter()
        .filter(|w| w.count(args) > 0)
        .flat_map(|&workload| {
            [false, true].map(|tracked| Case {
                workload,
                tracked,
                count: workload.count(args),
            })
        })
        .collect();
    if cases.is_empty() {
        bail!("every workload's count is 0: nothing to measure");
    }
    let built = crate::tasks::build(true)?;
    // The commit the binary was built from, read now: a commit made while the bench runs
    // does not change what was measured.
    let commit = commit_label();
    let out_dir = cmd::target_dir().join("bench");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    // Private copies: others rebuilding target/ in the same tree mid-bench must not swap the
    // binaries between repetitions.
    let sensor_bin = copy_executable(&built, &out_dir.join("sensor"))?;
    let drivers = Drivers::new(&out_dir, &args.runtime_name)?;
    let mut auditd = if args.peers {
        match peers::Auditd::prepare(&out_dir) {
            Ok(a) => Some(a),
            Err(e) => {
                eprintln!("bench: --peers: auditd column skipped: {e:#}");
                None
            }
        }
    } else {
        None
    };

    eprintln!("bench: warm-up");
    for case in cases.iter().filter(|c| !c.tracked) {
        drivers.storm(case.workload, false, case.workload.warm_up_count(args))?;
    }

    let (_api_server, api_server) = match ApiServer::start(&out_dir) {
        Ok((server, label)) => (Some(server), Ok(label)),
        Err(e) => {
            eprintln!("bench: no API server for the sensor runs: {e:#}");
            (None, Err(format!("{e:#}")))
        }
    };
    let mut m = Measurements {
        cases: cases
            .iter()
            .map(|&case| CaseResults {
                case,
                without: Vec::new(),
                with: Vec::new(),
                counts: Vec::new(),
                auditd: Vec::new(),
                auditd_bare: Vec::new(),
                floor: Vec::new(),
                floor_bare: Vec::new(),
                work: Vec::new(),
                dispatch: Vec::new(),
            })
            .collect(),
        reps: args.reps,
        commit,
        skip_probes: args.skip_probes.clone(),
        bursts: Vec::new(),
        burst_procs: args.burst,
        burst_connects: args.connects,
        sensors: Vec::new(),
        hook_costs: None,
        peers: None,
        floor: None,
        interleave: None,
        interleave_pairs: args.interleave_pairs,
        stats_not_cumulative: false,
        load_before: loadavg(),
        load_after: String::new(),
        other_sensors: BTreeSet::new(),
        api_server,
    };

    let b = Bench {
        args,
        drivers,
        sensor_bin,
        out_dir: out_dir.clone(),
    };
    measure_with_sensor(&b, &mut m)?;
    if args.interleave_pairs > 0 {
        m.interleave = Some(measure_interleaved(&b, &mut m).map_err(|e| format!("{e:#}")));
    }
    if args.floor {
        m.floor = Some(measure_floor(&b, &mut m).map_err(|e| format!("{e:#}")));
    }
    if args.hook_stats {
        m.hook_costs = Some(measure_hook_costs(&b, &m).map_err(|e| format!("{e:#}")));
    }
    if let Some(a) = auditd.as_mut() {
        // After the sensor's repetitions, never among them: once auditd has enabled the
        // kernel's audit, every task forked from then on carries an audit context until
        // reboot, which would tax the bare runs of the sensor's comparison.
        m.peers = Some(measure_peers(args, a, &b.drivers, &mut m).map_err(|e| format!("{e:#}")));
    } else if args.peers {
        m.peers = Some(Err(
            "auditd could not run here (see the bench's stderr)".into()
        ));
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

/// Which side of a comparison runs first in round `round` (false first, then true, then the
/// other way round), so that drift on a shared machine hits both sides alike.
fn alternating(round: u32) -> [bool; 2] {
    let true_first = round % 2 == 1;
    [true_first, !true_first]
}

/// The untracked storms auditd is compared on: the syscall-heavy ones of the issue.
fn audited(case: &Case) -> bool {
    !case.tracked && matches!(case.workload, Workload::ReadWrite | Workload::OpenClose)
}

/// `--peers`: the audited storms under auditd and bare, alternating, as many repetitions as
/// the sensor's; returns how auditd ran, for the report.
fn measure_peers(
    args: &BenchArgs,
    auditd: &mut peers::Auditd,
    drivers: &Drivers,
    m: &mut Measurements,
) -> Result<String> {
    if !m.cases.iter().any(|r| audited(&r.case)) {
        bail!("--read-writes and --opens are both 0: nothing to run under auditd");
    }
    alternate_column(
        args,
        drivers,
        m,
        "--peers",
        [
            "under auditd (CIS Docker rules), no sensor",
            "bare, for the auditd column",
        ],
        audited,
        |_, storm| {
            let running = auditd.start()?;
            let t = storm()?;
            running.stop()?;
            Ok((t, String::new()))
        },
        |r, under_auditd| {
            if under_auditd {
                &mut r.auditd
            } else {
                &mut r.auditd_bare
            }
        },
    )?;
    Ok(auditd.describe())
}

/// `--floor`: the untracked storms with the sensor's programs idle and bare, alternating, as
/// many repetitions as the sensor's.
fn measure_floor(b: &Bench, m: &mut Measurements) -> Result<()> {
    let (args, drivers) = (b.args, &b.drivers);
    let mut index = 1000;
    alternate_column(
        args,
        drivers,
        m,
        "--floor",
        [
            "with the sensor's programs idle",
            "bare, for the idle-hooks column",
        ],
        |case| !case.tracked,
        |_, storm| {
            // Apart from the timed runs' and --hook-stats' output files.
            index += 1;
            let run = b.start_sensor((true, None), index)?;
            let t = storm()?;
            run.stop()?;
            Ok((t, String::new()))
        },
        |r, idle| {
            if idle {
                &mut r.floor
            } else {
                &mut r.floor_bare
            }
        },
    )
}

/// A column of its own: each storm `which` selects, with a setting in place and bare, one right
/// after the other in alternating order, as many repetitions as `--reps`. `with_setting` sets
/// the setting up, runs the one storm it is given, tears it down and returns the storm's timing
/// and what to add to its log line; `slot` is where each side's timings go. Pairs next to each
/// other, rather than a whole round of storms on each side, keep this VM's drift over tens of
/// seconds out of the ratio (the report takes the median of the pairs' ratios).
#[allow(clippy::too_many_arguments)]
fn alternate_column(
    args: &BenchArgs,
    drivers: &Drivers,
    m: &mut Measurements,
    flag: &str,
    [set_label, bare_label]: [&str; 2],
    which: fn(&Case) -> bool,
    mut with_setting: impl FnMut(
        usize,
        &mut dyn FnMut() -> Result<StormTiming>,
    ) -> Result<(StormTiming, String)>,
    slot: fn(&mut CaseResults, bool) -> &mut Vec<StormTiming>,
) -> Result<()> {
    for rep in 0..args.reps {
        eprintln!("bench: {flag} repetition {}/{}", rep + 1, args.reps);
        for i in 0..m.cases.len() {
            let case = m.cases[i].case;
            if !which(&case) {
                continue;
            }
            let others = other_sensors();
            if !others.is_empty() {
                eprintln!("bench:   warning: other sensor processes are running: {others:?}");
            }
            m.other_sensors.extend(others);
            // By repetition and case: with an even number of cases, a count of rounds would
            // put each case's bare run first in every repetition.
            for set in alternating(rep + i as u32) {
                let label = if set { set_label } else { bare_label };
                let mut storm = || drivers.case(&case);
                let (t, more) = if set {
                    with_setting(i, &mut storm)?
                } else {
                    (storm()?, String::new())
                };
                eprintln!("bench:   {}, {label}{more}", timing_line(&case, &t));
                slot(&mut m.cases[i], set).push(t);
            }
        }
    }
    Ok(())
}

/// The interleaved columns: per case, one sensor run whose programs the storm driver switches
/// (SENSOR_BENCH_SWITCH) between short storms, `--interleave-pairs` pairs working and idle,
/// then as many idle and detached.
fn measure_interleaved(b: &Bench, m: &mut Measurements) -> Result<()> {
    let (args, drivers) = (b.args, &b.drivers);
    eprintln!(
        "bench: interleaved, {} pairs per case and comparison",
        args.interleave_pairs
    );
    let switch = b.out_dir.join("switch.sock");
    for i in 0..m.cases.len() {
        let case = m.cases[i].case;
        let run = b.start_sensor((false, Some(&switch)), 2000 + i)?;
        // A tracked storm's events are still being read for a few milliseconds after it.
        let settle_ms = if case.tracked { "10" } else { "0" };
        for (compare, work) in [("work", true), ("attach", false)] {
            let mut storm = Command::new(drivers.driver(case.tracked));
            storm
                .args(["storm", case.workload.storm_arg()])
                .arg(case.workload.interleave_count().to_string())
                .arg("--switch")
                .arg(&switch)
                .args(["--pairs", &args.interleave_pairs.to_string()])
                .args(["--settle-ms", settle_ms, "--compare", compare])
                .stderr(Stdio::inherit());
            let pairs = parse_pairs(&cmd::output(&mut storm)?)?;
            let r = &mut m.cases[i];
            *(if work { &mut r.work } else { &mut r.dispatch }) = pairs;
            eprintln!(
                "bench:   {}, {compare}: {}",
                report::case_name(&case),
                report::interleaved_text(r, work)
            );
        }
        stop_counted(run)?;
    }
    Ok(())
}

/// `--hook-stats`: a sensor run of its own with BPF run-time statistics on, each storm once,
/// reading the sensor's programs' counters from its fdinfo around each.
fn measure_hook_costs(b: &Bench, m: &Measurements) -> Result<Vec<hooks::HookCost>> {
    let drivers = &b.drivers;
    eprintln!("bench: --hook-stats: one sensor run with BPF run-time statistics on");
    let stats = hooks::BpfStats::enable()?;
    let run = b.start_sensor((false, None), m.sensors.len())?;
    let first = hooks::program_stats(run.pid())?;
    let names = hooks::program_names(first.keys());
    let mut costs = Vec::new();
    for (i, results) in m.cases.iter().enumerate() {
        let before = hooks::program_stats(run.pid())?;
        let t = drivers.case(&results.case)?;
        let after = hooks::program_stats(run.pid())?;
        eprintln!("bench:   {}", timing_line(&results.case, &t));
        costs.extend(hooks::deltas(i, &before, &after, &names));
    }
    run.stop()?;
    drop(stats);
    Ok(costs)
}

/// `git rev-parse --short HEAD`, plus `-dirty` when tracked files differ from that commit.
fn commit_label() -> String {
    let git = || {
        let mut git = Command::new("git");
        git.arg("-C").arg(cmd::workspace_root());
        git
    };
    let Some(head) = cmd::quiet_output(git().args(["rev-parse", "--short", "HEAD"])) else {
        return "unknown".into();
    };
    // `git diff --quiet HEAD` exits 1 when the work tree or index differs from HEAD.
    let clean = cmd::succeeds(git().args(["diff", "--quiet", "HEAD", "--"]));
    format!("{}{}", head.trim(), if clean { "" } else { "-dirty" })
}

/// The timed comparison: each storm without the sensor and, right before or after it, with a
/// sensor started for it alone, which counts the storm's events and drops from its periodic
/// stats; then, per repetition, one more sensor run for the concurrent tracked storms.
fn measure_with_sensor(b: &Bench, m: &mut Measurements) -> Result<()> {
    let (args, drivers) = (b.args, &b.drivers);
    let mut summaries = Vec::new();
    let mut counted: Vec<(usize, StormCounts)> = Vec::new();
    let mut not_cumulative = false;
    alternate_column(
        args,
        drivers,
        m,
        "timed",
        ["with sensor", "without sensor"],
        |_| true,
        |i, storm| {
            let mut run = b.start_sensor((false, None), summaries.len())?;
            let mut before = first_stats(&mut run);
            let t = storm()?;
            let mut more = String::new();
            if let Some(c) = counts_since(&mut run, &mut before, t.wall, &mut not_cumulative) {
                more = counts_text(&c);
                counted.push((i, c));
            }
            summaries.push(stop_counted(run)?);
            Ok((t, more))
        },
        |r, with| if with { &mut r.with } else { &mut r.without },
    )?;
    for (i, c) in counted {
        m.cases[i].counts.push(c);
    }
    if args.burst > 1 && args.connects > 0 {
        for rep in 0..args.reps {
            // Not timed against a baseline: only how many events/s the sensor takes without
            // loss when several tracked processes connect at once.
            let mut run = b.start_sensor((false, None), summaries.len())?;
            let mut before = first_stats(&mut run);
            let wall = drivers.burst(args.burst, args.connects)?;
            let mut line = format!(
                "bench: burst {}/{}, {} tracked storms: {wall:7.3} s",
                rep + 1,
                args.reps,
                args.burst
            );
            if let Some(c) = counts_since(&mut run, &mut before, wall, &mut not_cumulative) {
                line += &counts_text(&c);
                m.bursts.push(c);
            }
            eprintln!("{line}");
            summaries.push(stop_counted(run)?);
        }
    }
    m.stats_not_cumulative |= not_cumulative;
    m.sensors.extend(summaries);
    Ok(())
}

/// What every measurement runs with: the options, the storm drivers, the private copy of the
/// sensor binary and the output directory.
struct Bench<'a> {
    args: &'a BenchArgs,
    drivers: Drivers,
    sensor_bin: PathBuf,
    out_dir: PathBuf,
}

impl Bench<'_> {
    /// A sensor as every bench run starts it (idle: its programs return at their first check;
    /// switch: the socket of its bench switch); `index` names its output files.
    fn start_sensor(&self, setting: (bool, Option<&Path>), index: usize) -> Result<SensorRun> {
        SensorRun::start(
            &self.sensor_bin,
            &self.args.runtime_name,
            &self.args.skip_probes,
            setting,
            &self.out_dir,
            index,
        )
    }
}

/// The first stats record of a run, from which its storm's events are counted (None: the
/// timing still counts).
fn first_stats(run: &mut SensorRun) -> Option<Value> {
    match run.next_stats(STATS_TIMEOUT) {
        Ok(stats) => Some(stats),
        Err(e) => {
            eprintln!("bench:   no sensor_stats record to count events with: {e:#}");
            None
        }
    }
}

fn stop_counted(run: SensorRun) -> Result<SensorSummary> {
    let summary = run.stop()?;
    if let Some(d) = lost(summary.final_stats.as_ref()).filter(|&d| d > 0) {
        eprintln!("bench:   sensor stopped with {d} drops");
    }
    Ok(summary)
}

/// Counts of the storm that just ended: from the stats record taken before it to one surely
/// written after it (the first new record may have been taken during the storm: wait for two).
fn counts_since(
    run: &mut SensorRun,
    before: &mut Option<Value>,
    seconds: f64,
    not_cumulative: &mut bool,
) -> Option<StormCounts> {
    let prev = before.take()?;
    let after = run
        .next_stats(STATS_TIMEOUT)
        .and_then(|_| run.next_stats(STATS_TIMEOUT));
    match after {
        Ok(after) => {
            let counts = storm_counts(&prev, &after, seconds, not_cumulative);
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

    fn case(&self, case: &Case) -> Result<StormTiming> {
        self.storm(case.workload, case.tracked, case.count)
    }

    fn driver(&self, tracked: bool) -> &Path {
        if tracked {
            &self.tracked
        } else {
            &self.untracked
        }
    }

    /// Run one storm; returns the driver's own timing of its loop.
    fn storm(&self, workload: Workload, tracked: bool, count: u32) -> Result<StormTiming> {
        let mut storm = Command::new(self.driver(tracked));
        storm
            .args(["storm", workload.storm_arg(), &count.to_string()])
            .stderr(Stdio::inherit());
        parse_timing(&cmd::output(&mut storm)?)
    }
}

/// The storm driver's line, `{"wall_ns": N, "cpu_ns": N, "throughput": {"SET": RPS, ...}}`.
fn parse_timing(out: &str) -> Result<StormTiming> {
    let bad = || format!("the storm driver printed {out:?}, not its JSON timing line");
    let line: Value = serde_json::from_str(out.trim()).with_context(bad)?;
    timing_of(&line).with_context(bad)
}

/// The storm driver's line with `--switch`: `{"pairs": [[SET, UNSET], ...]}`, each a timing.
fn parse_pairs(out: &str) -> Result<Vec<[StormTiming; 2]>> {
    let bad = || format!("the storm driver printed {out:?}, not its JSON pairs line");
    let line: Value = serde_json::from_str(out.trim()).with_context(bad)?;
    line.get("pairs")
        .and_then(Value::as_array)
        .with_context(bad)?
        .iter()
        .map(|pair| match pair.as_array().map(Vec::as_slice) {
            Some([set, unset]) => Ok([timing_of(set)?, timing_of(unset)?]),
            _ => Err(anyhow::anyhow!("a pair that is not two timings")),
        })
        .collect::<Result<_>>()
        .with_context(bad)
}

fn timing_of(line: &Value) -> Result<StormTiming> {
    let bad = || format!("{line} is not a storm timing");
    let nanos = |field: &str| {
        line.get(field)
            .and_then(Value::as_u64)
            .map(|n| n as f64 / 1e9)
            .with_context(bad)
    };
    let throughput = match line.get("throughput") {
        Some(Value::Object(tests)) => tests
            .iter()
            .map(|(test, rps)| Ok((test.clone(), rps.as_f64().with_context(bad)?)))
            .collect::<Result<_>>()?,
        _ => Vec::new(),
    };
    Ok(StormTiming {
        wall: nanos("wall_ns")?,
        cpu: nanos("cpu_ns")?,
        throughput,
    })
}

fn timing_line(case: &Case, t: &StormTiming) -> String {
    let mut line = format!(
        "{:<36} {:7.3} s ({:.3} s CPU)",
        report::case_name(case),
        t.wall,
        t.cpu
    );
    for (test, rps) in &t.throughput {
        line += &format!(" {test} {rps:.0}/s");
    }
    line
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
