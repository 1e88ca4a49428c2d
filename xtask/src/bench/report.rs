//! The bench's markdown table (for the README) and its PASS/FAIL lines.

use std::fmt::Write as _;

use super::sensor::{NOT_LOST, lost, nonzero_counters, sum_counters};
use super::{Case, CaseResults, Measurements, StormTiming, Workload};

/// Targets the sensor is held to (issue 9): what a process outside the runtime trees pays.
const UNTRACKED_MAX_RATIO: f64 = 1.03;
/// Tracked exec and connect storms keep their earlier target; the other tracked storms, whose
/// every syscall the sensor looks at, have a tighter one.
const TRACKED_STORM_MAX_RATIO: f64 = 1.15;
const TRACKED_IO_MAX_RATIO: f64 = 1.10;
/// Redis throughput with the sensor over bare, tracked or not.
const REDIS_MIN_RATIO: f64 = 0.97;
const ZERO_DROPS_AT_EVENTS_PER_S: f64 = 20_000.0;
const MAX_RSS: u64 = 50 * 1024 * 1024;
/// `--hook-stats` rows with fewer runs during a storm are left out.
const HOOK_MIN_RUNS: u64 = 10;

/// A row's target, on the ratio with the sensor over bare.
#[derive(Clone, Copy)]
enum Target {
    /// Time: at most this ratio (exclusive).
    Below(f64),
    /// Throughput: at least this ratio.
    AtLeast(f64),
}

impl Target {
    fn of(case: &Case) -> Self {
        match (case.workload, case.tracked) {
            (Workload::Redis, _) => Target::AtLeast(REDIS_MIN_RATIO),
            (_, false) => Target::Below(UNTRACKED_MAX_RATIO),
            (Workload::Exec | Workload::Connect, true) => Target::Below(TRACKED_STORM_MAX_RATIO),
            (_, true) => Target::Below(TRACKED_IO_MAX_RATIO),
        }
    }

    fn met(self, ratio: f64) -> bool {
        match self {
            Target::Below(max) => ratio < max,
            Target::AtLeast(min) => ratio >= min,
        }
    }

    fn text(self) -> String {
        match self {
            Target::Below(max) => format!("< {max:.2}x"),
            Target::AtLeast(min) => format!("≥ {min:.2}x"),
        }
    }
}

fn workload_name(workload: Workload) -> &'static str {
    match workload {
        Workload::Exec => "exec storm",
        Workload::Connect => "connect storm",
        Workload::ReadWrite => "read/write storm",
        Workload::OpenClose => "open/close storm",
        Workload::UnixPair => "unix socketpair storm",
        Workload::Redis => "redis-benchmark",
    }
}

pub fn case_name(case: &Case) -> String {
    let tree = if case.tracked { "tracked" } else { "untracked" };
    format!("{}, {tree}", workload_name(case.workload))
}

fn workload_detail(case: &Case) -> String {
    let n = grouped(case.count.into());
    match case.workload {
        Workload::Exec => format!("{n} × fork+exec /bin/true"),
        Workload::Connect => format!("{n} × TCP connect to 127.0.0.1"),
        Workload::ReadWrite => format!("{n} × 1-byte read+write, as dd bs=1"),
        Workload::OpenClose => format!("{n} × open+close of a file"),
        Workload::UnixPair => format!("{n} × 1-byte send+recv"),
        Workload::Redis => format!("-n {n}, server on CPU 1"),
    }
}

fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

fn median_of(timings: &[StormTiming], f: impl Fn(&StormTiming) -> Option<f64>) -> Option<f64> {
    median(&timings.iter().filter_map(f).collect::<Vec<_>>())
}

fn rps(t: &StormTiming, test: &str) -> Option<f64> {
    t.throughput
        .iter()
        .find_map(|(name, rps)| (name == test).then_some(*rps))
}

/// The median of the pairs' ratios, `with[i]` over `bare[i]` of `f` (runs taken next to each
/// other, see `alternate_column`); the ratio of the medians when the sides differ in number.
fn paired_ratio(
    with: &[StormTiming],
    bare: &[StormTiming],
    f: impl Fn(&StormTiming) -> Option<f64>,
) -> Option<f64> {
    if with.len() != bare.len() {
        return Some(median_of(with, &f)? / median_of(bare, &f)?);
    }
    let ratios: Vec<f64> = with
        .iter()
        .zip(bare)
        .filter_map(|(w, b)| Some(f(w)? / f(b)?))
        .collect();
    median(&ratios)
}

/// The median of the interleaved pairs' ratios, the setting's side over the other's, of `f`.
fn interleaved_ratio(
    pairs: &[[StormTiming; 2]],
    f: impl Fn(&StormTiming) -> Option<f64>,
) -> Option<f64> {
    let ratios: Vec<f64> = pairs
        .iter()
        .filter_map(|[set, unset]| Some(f(set)? / f(unset)?))
        .collect();
    median(&ratios)
}

/// The quartiles of the same ratios, to show their spread.
fn interleaved_quartiles(
    pairs: &[[StormTiming; 2]],
    f: impl Fn(&StormTiming) -> Option<f64>,
) -> Option<(f64, f64)> {
    let mut ratios: Vec<f64> = pairs
        .iter()
        .filter_map(|[set, unset]| Some(f(set)? / f(unset)?))
        .collect();
    if ratios.len() < 4 {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    Some((ratios[ratios.len() / 4], ratios[ratios.len() * 3 / 4]))
}

/// The progress line of one interleaved comparison of a case (`work`: working over idle, else
/// idle over detached): the median ratio and its quartiles, per redis test.
pub fn interleaved_text(r: &CaseResults, work: bool) -> String {
    let pairs = if work { &r.work } else { &r.dispatch };
    let one = |f: &dyn Fn(&StormTiming) -> Option<f64>| {
        let q = interleaved_quartiles(pairs, f)
            .map_or_else(String::new, |(a, b)| format!(" (quartiles {a:.3}-{b:.3})"));
        format!("{}{q}", ratio_text(interleaved_ratio(pairs, f)))
    };
    if r.case.workload.is_throughput() {
        ["SET", "GET"]
            .map(|test| format!("{test} {}", one(&|t| rps(t, test))))
            .join(", ")
    } else {
        one(&|t| Some(t.wall))
    }
}

fn pass(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Thousands separators, for event counts and rates.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ratio_text(r: Option<f64>) -> String {
    r.map_or_else(|| "n/a".into(), |r| format!("{r:.3}x"))
}

/// A column shown when any row has a value: its heading and the row's value.
type OptionalColumn = (&'static str, fn(&Row) -> Option<f64>);

/// One line of the table: a storm (time) or one redis test (throughput) in one tree.
struct Row {
    name: String,
    bare: String,
    with: String,
    /// With the sensor over bare: time, or throughput for redis.
    ratio: Option<f64>,
    cpu_ratio: Option<f64>,
    /// Under auditd over bare (`--peers`), where measured.
    auditd_ratio: Option<f64>,
    /// With the sensor's programs attached but idle over bare (`--floor`), where measured.
    floor_ratio: Option<f64>,
    /// Interleaved: the programs working over idle, and idle over detached.
    work_ratio: Option<f64>,
    dispatch_ratio: Option<f64>,
    events_per_s: String,
    target: Target,
}

impl Row {
    /// Interleaved, both parts: what the programs cost the storm in all.
    fn interleaved(&self) -> Option<f64> {
        Some(self.work_ratio? * self.dispatch_ratio?)
    }

    /// The ratio the target is judged on: the interleaved one where measured (its pairs run
    /// milliseconds apart, so it resolves a few percent here, which a pair of whole runs
    /// seconds apart does not), else with the sensor over bare.
    fn judged(&self) -> Option<f64> {
        self.interleaved().or(self.ratio)
    }

    fn passed(&self) -> bool {
        self.judged().is_some_and(|r| self.target.met(r))
    }
}

fn rows(m: &Measurements) -> Vec<Row> {
    let mut rows = Vec::new();
    for r in &m.cases {
        let case = &r.case;
        let rates: Vec<f64> = r.counts.iter().map(|c| c.events_per_s()).collect();
        let events_per_s = match median(&rates) {
            Some(x) if case.tracked => grouped(x.round() as u64),
            Some(x) => format!("{} (expect 0)", grouped(x.round() as u64)),
            None => "n/a".into(),
        };
        let target = Target::of(case);
        if case.workload.is_throughput() {
            for test in ["SET", "GET"] {
                let bare = median_of(&r.without, |t| rps(t, test));
                let with = median_of(&r.with, |t| rps(t, test));
                let req = |x: Option<f64>| {
                    x.map_or_else(|| "n/a".into(), |x| format!("{} req/s", grouped(x as u64)))
                };
                rows.push(Row {
                    name: format!(
                        "{} {test}, {} ({})",
                        workload_name(case.workload),
                        if case.tracked { "tracked" } else { "untracked" },
                        workload_detail(case)
                    ),
                    bare: req(bare),
                    with: req(with),
                    ratio: paired_ratio(&r.with, &r.without, |t| rps(t, test)),
                    cpu_ratio: None,
                    auditd_ratio: None,
                    floor_ratio: paired_ratio(&r.floor, &r.floor_bare, |t| rps(t, test)),
                    work_ratio: interleaved_ratio(&r.work, |t| rps(t, test)),
                    dispatch_ratio: interleaved_ratio(&r.dispatch, |t| rps(t, test)),
                    events_per_s: events_per_s.clone(),
                    target,
                });
            }
        } else {
            rows.push(time_row(r, events_per_s, target));
        }
    }
    rows
}

fn time_row(r: &CaseResults, events_per_s: String, target: Target) -> Row {
    let wall = |v: &[StormTiming]| median_of(v, |t| Some(t.wall));
    let secs = |s: Option<f64>| s.map_or_else(|| "n/a".into(), |s| format!("{s:.3} s"));
    Row {
        name: format!("{} ({})", case_name(&r.case), workload_detail(&r.case)),
        bare: secs(wall(&r.without)),
        with: secs(wall(&r.with)),
        ratio: paired_ratio(&r.with, &r.without, |t| Some(t.wall)),
        cpu_ratio: paired_ratio(&r.with, &r.without, |t| Some(t.cpu)),
        auditd_ratio: paired_ratio(&r.auditd, &r.auditd_bare, |t| Some(t.wall)),
        floor_ratio: paired_ratio(&r.floor, &r.floor_bare, |t| Some(t.wall)),
        work_ratio: interleaved_ratio(&r.work, |t| Some(t.wall)),
        dispatch_ratio: interleaved_ratio(&r.dispatch, |t| Some(t.wall)),
        events_per_s,
        target,
    }
}

struct Totals {
    /// Sum of the drop counters in each run's final sensor_stats (None if no run wrote one).
    drops_at_exit: Option<u64>,
    drop_reasons: Vec<(String, u64)>,
    /// Highest events/s of a tracked storm, and its drops.
    max_tracked_rate: Option<(f64, u64)>,
    peak_rss: Option<u64>,
}

fn totals(m: &Measurements) -> Totals {
    let mut drops_at_exit = None;
    let mut drop_reasons: Vec<(String, u64)> = Vec::new();
    for s in &m.sensors {
        let drops = s.final_stats.as_ref().and_then(|f| f.get("drops"));
        if let Some(d) = lost(s.final_stats.as_ref()) {
            *drops_at_exit.get_or_insert(0) += d;
        }
        for (reason, n) in nonzero_counters(drops) {
            match drop_reasons.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, total)) => *total += n,
                None => drop_reasons.push((reason, n)),
            }
        }
    }
    let max_tracked_rate = m
        .cases
        .iter()
        .filter(|r| r.case.tracked)
        .flat_map(|r| r.counts.iter())
        .chain(&m.bursts)
        .map(|c| (c.events_per_s(), c.drops))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    Totals {
        drops_at_exit,
        drop_reasons,
        max_tracked_rate,
        peak_rss: m.sensors.iter().map(|s| s.peak_rss).max(),
    }
}

pub fn markdown(m: &Measurements) -> String {
    let mut md = String::new();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(md, "### Overhead (`cargo xtask bench`)\n");
    let _ = writeln!(
        md,
        "Linux {}, {cpus} CPUs, commit {}; {} of every storm without the sensor and, right \
         before or after it (the order alternates), with a sensor started for that storm alone; \
         load average {} before, {} after.\n",
        kernel.trim(),
        m.commit,
        if m.reps == 1 {
            "1 repetition".to_owned()
        } else {
            format!("{} repetitions", m.reps)
        },
        m.load_before,
        m.load_after,
    );
    if !m.skip_probes.is_empty() {
        let _ = writeln!(
            md,
            "The sensor ran with SENSOR_SKIP_PROBES={}: those probes were not attached.\n",
            m.skip_probes
        );
    }
    let rows = rows(m);
    let optional: [OptionalColumn; 5] = [
        ("idle hooks / bare", |r| r.floor_ratio),
        ("interleaved: working / idle", |r| r.work_ratio),
        ("interleaved: idle / detached", |r| r.dispatch_ratio),
        ("interleaved: both", Row::interleaved),
        ("auditd / bare", |r| r.auditd_ratio),
    ];
    let shown: Vec<_> = optional
        .iter()
        .filter(|(_, get)| rows.iter().any(|r| get(r).is_some()))
        .collect();
    let heads: String = shown.iter().map(|(h, _)| format!(" {h} |")).collect();
    let rules = "---:|".repeat(shown.len());
    let _ = writeln!(
        md,
        "| workload | bare | with sensor | with / bare |{heads} CPU time with / bare | events/s | target | result |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|{rules}---:|---:|---|---|");
    for row in &rows {
        let extra: String = shown
            .iter()
            .map(|(_, get)| get(row).map_or_else(|| " |".into(), |r| format!(" {r:.3}x |")))
            .collect();
        let cpu = row
            .cpu_ratio
            .map_or_else(String::new, |r| format!("{r:.3}x"));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |{extra} {cpu} | {} | {} | {} |",
            row.name,
            row.bare,
            row.with,
            ratio_text(row.ratio),
            row.events_per_s,
            row.target.text(),
            pass(row.passed()),
        );
    }

    let _ = writeln!(
        md,
        "\nWith / bare: the median, over the repetitions, of each pair's wall time with the \
         sensor over its time without (redis: requests/s with over without, so higher is \
         better); the bare and with columns are medians. Pairs next to each other keep this \
         VM's drift over tens of seconds out of the ratio. CPU time: the same on the storm's \
         own CPU time (user+system of the driver and its children, where the sensor's kernel \
         programs are charged), steadier on a busy machine. Events/s: kernel events the sensor \
         read per second of storm, from its `sensor_stats` (untracked storms should cause \
         none). Every storm runs in the driver's process pinned to CPU 0; redis-server is its \
         child, pinned to CPU 1."
    );
    match &m.interleave {
        Some(Ok(())) => {
            let _ = writeln!(
                md,
                "\nInterleaved (`--interleave-pairs {}`): per case, one sensor run (started for \
                 it, after the timed repetitions) whose kernel programs the storm driver \
                 switches between storms of tens of milliseconds (SENSOR_BENCH_SWITCH): {} \
                 pairs with the programs working and idle (attached, returning at their first \
                 check), then as many idle and detached, each pair one storm right after the \
                 other, the order alternating; each column is the median of its pairs' ratios, \
                 and both is their product: what the programs cost the storm, the kernel's \
                 dispatch to them included. Pairs milliseconds apart run at one speed of this \
                 VM, which changes by 10-40 % from one second to the next; where measured, the \
                 result is judged on both, the whole-run pairs being too far apart to resolve \
                 a few percent. It leaves out what the sensor's reader costs the storm's CPU, \
                 which with / bare includes: none for untracked storms, which make no events.",
                m.interleave_pairs, m.interleave_pairs
            );
        }
        Some(Err(why)) => {
            let _ = writeln!(md, "\nNo interleaved columns: {why}.");
        }
        None => {}
    }
    match &m.floor {
        Some(Ok(())) => {
            let _ = writeln!(
                md,
                "\nIdle hooks / bare (`--floor`): median with the sensor running with every \
                 kernel program attached as usual but returning at its first check \
                 (`SENSOR_IDLE_PROBES=1`), over a bare run next to each, median of the pairs' \
                 ratios, after the timed repetitions: what the kernel's dispatch to the programs \
                 costs before they do anything, the part no program can save (fanotify's \
                 marks are placed as usual)."
            );
        }
        Some(Err(why)) => {
            let _ = writeln!(md, "\n--floor: no idle-hooks column: {why}.");
        }
        None => {}
    }
    match &m.peers {
        Some(Ok(how)) => {
            let _ = writeln!(
                md,
                "\nauditd / bare: wall time under auditd (no sensor) over a bare run next to \
                 each, median of the pairs' ratios, after the timed repetitions; {how}."
            );
        }
        Some(Err(why)) => {
            let _ = writeln!(md, "\n--peers: no auditd column: {why}.");
        }
        None => {}
    }

    let t = totals(m);
    let _ = writeln!(md, "\n| sensor | value | target | result |");
    let _ = writeln!(md, "|---|---:|---|---|");
    let (rate_text, drops_result) = drops_verdict(&t);
    let _ = writeln!(
        md,
        "| drops (final sensor_stats, all runs) | {rate_text} | 0 at ≥ 20,000 tracked events/s | {drops_result} |"
    );
    if !m.bursts.is_empty() {
        let rates: Vec<f64> = m.bursts.iter().map(|c| c.events_per_s()).collect();
        let drops: u64 = m.bursts.iter().map(|c| c.drops).sum();
        let _ = writeln!(
            md,
            "| burst: {} tracked connect storms at once ({} × {}), median | {} events/s, {} lost | | |",
            m.burst_procs,
            m.burst_procs,
            grouped(m.burst_connects.into()),
            grouped(median(&rates).unwrap_or(0.0).round() as u64),
            grouped(drops),
        );
    }
    let (rss_text, rss_result) = match t.peak_rss {
        Some(r) => (format!("{:.1} MiB", mib(r)), pass(r < MAX_RSS)),
        None => ("n/a".into(), "FAIL"),
    };
    let _ = writeln!(
        md,
        "| peak RSS (VmHWM) | {rss_text} | < 50 MiB | {rss_result} |"
    );
    let api = match &m.api_server {
        Ok(label) => label.clone(),
        Err(why) => format!("none ({why})"),
    };
    let _ = writeln!(
        md,
        "| API server seeded and probed by every sensor run | {api} | | |"
    );
    let startup: Vec<f64> = m.sensors.iter().map(|s| s.startup_cpu_s).collect();
    if let Some(s) = median(&startup) {
        let _ = writeln!(md, "| CPU time to start (median) | {s:.2} s | | |");
    }
    let cpu: f64 = m.sensors.iter().map(|s| s.window_cpu_s).sum();
    let wall: f64 = m.sensors.iter().map(|s| s.window_wall_s).sum();
    if wall > 0.0 {
        let _ = writeln!(
            md,
            "| CPU time while measured (utime+stime) | {cpu:.2} s in {wall:.1} s ({:.1} % of a CPU) | | |",
            cpu / wall * 100.0
        );
    }
    let events: u64 = m
        .sensors
        .iter()
        .filter_map(|s| sum_counters(s.final_stats.as_ref().and_then(|f| f.get("events"))))
        .sum();
    if events > 0 {
        let _ = writeln!(
            md,
            "| CPU per event | {:.1} µs ({} events) | | |",
            cpu / events as f64 * 1e6,
            grouped(events)
        );
    }
    if let Some(ringbuf) = m
        .sensors
        .iter()
        .rev()
        .find_map(|s| s.final_stats.as_ref()?.get("ringbuf"))
    {
        let _ = writeln!(
            md,
            "| ring buffer (last run) | {} | | |",
            ringbuf_text(ringbuf)
        );
    }
    hook_costs(&mut md, m);
    if !t.drop_reasons.is_empty() {
        let reasons: Vec<String> = t
            .drop_reasons
            .iter()
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        let _ = writeln!(
            md,
            "\nCounters by reason (all runs; {} count no lost event): {}.",
            NOT_LOST.join(", "),
            reasons.join(", ")
        );
    }
    if !m.other_sensors.is_empty() {
        let pids: Vec<String> = m.other_sensors.iter().map(u32::to_string).collect();
        let _ = writeln!(
            md,
            "\nWarning: other sensor processes ran during the bench (pids {}); their probes also \
             slowed the runs without this sensor, so these slowdowns understate the cost.",
            pids.join(", ")
        );
    }
    if m.stats_not_cumulative {
        let _ = writeln!(
            md,
            "\nNote: sensor_stats counters went down between records, so the per-storm event \
             counts above are not reliable."
        );
    }
    md
}

/// The `--hook-stats` table: per storm, each program that ran.
fn hook_costs(md: &mut String, m: &Measurements) {
    let costs = match &m.hook_costs {
        None => return,
        Some(Err(why)) => {
            let _ = writeln!(md, "\n--hook-stats: not measured: {why}.");
            return;
        }
        Some(Ok(costs)) => costs,
    };
    let _ = writeln!(
        md,
        "\n#### What each hook costs (`--hook-stats`)\n\n\
         One more sensor run, after the timed ones, with the kernel's BPF run-time statistics \
         on (BPF_ENABLE_STATS; each run then also pays two clock reads, included below), every \
         storm once. Runs count every process's calls during the storm, not only the storm's; \
         hooks with fewer than {HOOK_MIN_RUNS} runs in a storm are left out.\n"
    );
    let _ = writeln!(md, "| storm | hook | runs | ns per run | total |");
    let _ = writeln!(md, "|---|---|---:|---:|---:|");
    // A few runs of a program during a storm are other processes' (a compiler forking):
    // noise beside the storm's thousands.
    for c in costs.iter().filter(|c| c.runs >= HOOK_MIN_RUNS) {
        let Some(r) = m.cases.get(c.case) else {
            continue;
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} | {:.1} ms |",
            case_name(&r.case),
            c.hook,
            grouped(c.runs),
            c.run_ns as f64 / c.runs as f64,
            c.run_ns as f64 / 1e6
        );
    }
}

/// `{size_bytes, batches, max_batch_bytes}` in words; any other shape as JSON.
fn ringbuf_text(ringbuf: &serde_json::Value) -> String {
    let field = |name: &str| ringbuf.get(name).and_then(serde_json::Value::as_u64);
    match (
        field("size_bytes"),
        field("batches"),
        field("max_batch_bytes"),
    ) {
        (Some(size), Some(batches), Some(max_batch)) => format!(
            "{:.0} MiB; {} reader wake-ups; at most {:.1} KiB drained in one",
            mib(size),
            grouped(batches),
            max_batch as f64 / 1024.0
        ),
        _ => format!("`{ringbuf}`"),
    }
}

fn drops_verdict(t: &Totals) -> (String, &'static str) {
    let drops = t.drops_at_exit;
    let drops_text = drops.map_or_else(|| "unknown".to_owned(), grouped);
    match t.max_tracked_rate {
        Some((rate, _)) => {
            let text = format!(
                "{drops_text} (tracked peak {} events/s)",
                grouped(rate.round() as u64)
            );
            let ok = drops == Some(0) && rate >= ZERO_DROPS_AT_EVENTS_PER_S;
            (text, pass(ok))
        }
        None => (format!("{drops_text} (tracked event rate unknown)"), "FAIL"),
    }
}

/// One PASS/FAIL line per target.
pub fn verdicts(m: &Measurements) -> Vec<String> {
    let mut lines: Vec<String> = rows(m)
        .iter()
        .map(|row| match row.interleaved() {
            Some(both) => format!(
                "{} {}: {} interleaved (working / idle {}, idle / detached {}), {} with / bare \
                 (target {})",
                pass(row.passed()),
                row.name,
                ratio_text(Some(both)),
                ratio_text(row.work_ratio),
                ratio_text(row.dispatch_ratio),
                ratio_text(row.ratio),
                row.target.text()
            ),
            None => format!(
                "{} {}: {} (target {})",
                pass(row.passed()),
                row.name,
                ratio_text(row.ratio),
                row.target.text()
            ),
        })
        .collect();
    let t = totals(m);
    let (text, result) = drops_verdict(&t);
    lines.push(format!(
        "{result} zero drops at 20,000 tracked events/s: drops {text}"
    ));
    match t.peak_rss {
        Some(r) => lines.push(format!(
            "{} peak RSS < 50 MiB: {:.1} MiB",
            pass(r < MAX_RSS),
            mib(r)
        )),
        None => lines.push("FAIL peak RSS < 50 MiB: not measured".into()),
    }
    lines
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::{markdown, paired_ratio, verdicts};
    use crate::bench::{Case, CaseResults, Measurements, StormCounts, StormTiming, Workload};

    fn timing(wall: f64, throughput: &[(&str, f64)]) -> StormTiming {
        StormTiming {
            wall,
            cpu: wall,
            throughput: throughput
                .iter()
                .map(|(t, r)| ((*t).to_owned(), *r))
                .collect(),
        }
    }

    fn results(
        workload: Workload,
        tracked: bool,
        bare: StormTiming,
        with: StormTiming,
    ) -> CaseResults {
        CaseResults {
            case: Case {
                workload,
                tracked,
                count: 1000,
            },
            without: vec![bare],
            with: vec![with],
            counts: vec![StormCounts {
                events: if tracked { 30_000 } else { 0 },
                drops: 0,
                seconds: 1.0,
            }],
            auditd: Vec::new(),
            auditd_bare: Vec::new(),
            floor: Vec::new(),
            floor_bare: Vec::new(),
            work: Vec::new(),
            dispatch: Vec::new(),
        }
    }

    fn measurements(cases: Vec<CaseResults>) -> Measurements {
        Measurements {
            cases,
            reps: 1,
            commit: "abc1234-dirty".into(),
            skip_probes: String::new(),
            hook_costs: None,
            bursts: Vec::new(),
            burst_procs: 0,
            burst_connects: 0,
            sensors: Vec::new(),
            peers: None,
            floor: None,
            interleave: None,
            interleave_pairs: 0,
            stats_not_cumulative: false,
            load_before: "0.00".into(),
            load_after: "0.00".into(),
            other_sensors: BTreeSet::new(),
            api_server: Err("none in this test".into()),
        }
    }

    fn verdict<'a>(lines: &'a [String], name: &str) -> &'a str {
        let line = lines
            .iter()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no verdict for {name} in {lines:#?}"));
        &line[..4]
    }

    #[test]
    fn the_ratio_is_the_median_of_the_pairs_not_of_the_sides() {
        // Drift: the third pair ran on a machine twice as slow, on both sides.
        let bare = [1.0, 1.0, 2.0].map(|w| timing(w, &[]));
        let with = [1.1, 1.0, 2.04].map(|w| timing(w, &[]));
        let r = paired_ratio(&with, &bare, |t| Some(t.wall)).unwrap();
        assert!((r - 1.02).abs() < 1e-9, "{r}");
        // Sides of different lengths (a run that failed): the medians' ratio.
        let r = paired_ratio(&with[..2], &bare, |t| Some(t.wall)).unwrap();
        assert!((r - 1.05).abs() < 1e-9, "{r}");
        assert_eq!(paired_ratio(&[], &[], |t| Some(t.wall)), None);
    }

    #[test]
    fn each_row_is_held_to_its_target() {
        let t = |wall| timing(wall, &[]);
        let redis = |set, get| timing(2.0, &[("SET", set), ("GET", get)]);
        let mut readwrite = results(Workload::ReadWrite, false, t(1.0), t(1.02));
        readwrite.auditd = vec![t(1.6)];
        readwrite.auditd_bare = vec![t(1.0)];
        let m = measurements(vec![
            readwrite,
            results(Workload::ReadWrite, true, t(1.0), t(1.12)),
            // The tracked exec storm keeps its 15 % target.
            results(Workload::Exec, true, t(1.0), t(1.12)),
            results(Workload::OpenClose, false, t(1.0), t(1.05)),
            // Throughput: higher is better, at least 0.97 of bare.
            results(
                Workload::Redis,
                false,
                redis(100.0, 100.0),
                redis(98.0, 96.0),
            ),
        ]);
        let lines = verdicts(&m);
        assert_eq!(verdict(&lines, "read/write storm, untracked"), "PASS");
        assert_eq!(verdict(&lines, "read/write storm, tracked"), "FAIL");
        assert_eq!(verdict(&lines, "exec storm, tracked"), "PASS");
        assert_eq!(verdict(&lines, "open/close storm, untracked"), "FAIL");
        assert_eq!(verdict(&lines, "redis-benchmark SET, untracked"), "PASS");
        assert_eq!(verdict(&lines, "redis-benchmark GET, untracked"), "FAIL");
        // No sensor run left a peak RSS or a final stats record: those targets fail.
        assert_eq!(verdict(&lines, "peak RSS"), "FAIL");

        let md = markdown(&m);
        assert!(md.contains("commit abc1234-dirty;"), "{md}");
        assert!(md.contains("| auditd / bare |"), "{md}");
        let row = md
            .lines()
            .find(|l| l.starts_with("| read/write storm, untracked"))
            .unwrap_or_default();
        assert!(
            row.contains("| 1.020x | 1.600x |") && row.ends_with("| < 1.03x | PASS |"),
            "{row}"
        );
        let row = md
            .lines()
            .find(|l| l.starts_with("| redis-benchmark GET, untracked"))
            .unwrap_or_default();
        assert!(
            row.contains("| 100 req/s | 96 req/s | 0.960x |")
                && row.ends_with("| ≥ 0.97x | FAIL |"),
            "{row}"
        );
    }

    #[test]
    fn where_interleaved_the_target_is_judged_on_both_parts() {
        let t = |wall| timing(wall, &[]);
        let redis = |set, get| timing(2.0, &[("SET", set), ("GET", get)]);
        // The whole runs say 1.10x (too far apart to tell); the interleaved pairs say the
        // programs cost 1 % and their dispatch 1 %: 1.0201x, within 1.03x.
        let mut pair = results(Workload::UnixPair, false, t(1.0), t(1.1));
        pair.work = vec![[t(1.01), t(1.0)], [t(2.02), t(2.0)], [t(0.9), t(1.0)]];
        pair.dispatch = vec![[t(1.01), t(1.0)], [t(1.5), t(1.0)], [t(1.01), t(1.0)]];
        // Working and idle alone are not enough: judged on with / bare.
        let mut open = results(Workload::OpenClose, false, t(1.0), t(1.1));
        open.work = vec![[t(1.0), t(1.0)]];
        // Throughput: working over idle 0.98, idle over detached 0.98: 0.9604, below 0.97.
        let mut redis_row = results(
            Workload::Redis,
            false,
            redis(100.0, 100.0),
            redis(100.0, 100.0),
        );
        redis_row.work = vec![[redis(98.0, 100.0), redis(100.0, 100.0)]];
        redis_row.dispatch = vec![[redis(98.0, 100.0), redis(100.0, 100.0)]];
        let mut m = measurements(vec![pair, open, redis_row]);
        m.interleave = Some(Ok(()));
        m.interleave_pairs = 3;
        let lines = verdicts(&m);
        assert_eq!(verdict(&lines, "unix socketpair storm, untracked"), "PASS");
        assert_eq!(verdict(&lines, "open/close storm, untracked"), "FAIL");
        assert_eq!(verdict(&lines, "redis-benchmark SET, untracked"), "FAIL");
        assert_eq!(verdict(&lines, "redis-benchmark GET, untracked"), "PASS");
        let md = markdown(&m);
        assert!(
            md.contains(
                "| with / bare | interleaved: working / idle | interleaved: idle / detached | interleaved: both | CPU time"
            ),
            "{md}"
        );
        let row = md
            .lines()
            .find(|l| l.starts_with("| unix socketpair storm, untracked"))
            .unwrap_or_default();
        assert!(
            row.contains("| 1.100x | 1.010x | 1.010x | 1.020x |"),
            "{row}"
        );
        assert!(md.contains("Interleaved (`--interleave-pairs 3`)"), "{md}");
    }

    #[test]
    fn the_idle_hooks_column_comes_before_auditd_and_only_where_measured() {
        let t = |wall| timing(wall, &[]);
        let redis = |set, get| timing(2.0, &[("SET", set), ("GET", get)]);
        let mut pair = results(Workload::UnixPair, false, t(1.0), t(1.2));
        pair.floor = vec![t(1.1), t(1.06), t(1.3)];
        pair.floor_bare = vec![t(1.0), t(1.0), t(0.9)];
        pair.auditd = vec![t(1.5)];
        pair.auditd_bare = vec![t(1.0)];
        let mut redis_row = results(
            Workload::Redis,
            false,
            redis(100.0, 100.0),
            redis(90.0, 95.0),
        );
        redis_row.floor = vec![redis(95.0, 99.0)];
        redis_row.floor_bare = vec![redis(100.0, 100.0)];
        let mut m = measurements(vec![
            pair,
            redis_row,
            results(Workload::UnixPair, true, t(1.0), t(1.1)),
        ]);
        m.floor = Some(Ok(()));
        let md = markdown(&m);
        assert!(
            md.contains("| with / bare | idle hooks / bare | auditd / bare | CPU time"),
            "{md}"
        );
        let row = |start: &str| {
            md.lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_default()
                .to_string()
        };
        // Medians: 1.1 over 1.0.
        let pair = row("| unix socketpair storm, untracked");
        assert!(pair.contains("| 1.200x | 1.100x | 1.500x |"), "{pair}");
        let set = row("| redis-benchmark SET, untracked");
        assert!(set.contains("| 0.900x | 0.950x | |"), "{set}");
        // Not measured for tracked storms: an empty cell, the row still complete.
        let tracked = row("| unix socketpair storm, tracked");
        assert!(tracked.contains("| 1.100x | | |"), "{tracked}");
        assert!(md.contains("Idle hooks / bare (`--floor`)"), "{md}");
    }
}
