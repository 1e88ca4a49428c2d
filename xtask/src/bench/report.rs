//! The bench's markdown table (for the README) and its PASS/FAIL lines.

use std::fmt::Write as _;
use std::process::Command;

use super::sensor::{NOT_LOST, lost, nonzero_counters, sum_counters};
use super::{CASES, Case, Measurements, StormTiming, Workload};

/// Targets the sensor is held to.
const UNTRACKED_MAX_SLOWDOWN: f64 = 0.03;
const TRACKED_MAX_SLOWDOWN: f64 = 0.15;
const ZERO_DROPS_AT_EVENTS_PER_S: f64 = 20_000.0;
const MAX_RSS: u64 = 50 * 1024 * 1024;

pub fn case_name(case: &Case) -> String {
    let workload = match case.workload {
        Workload::Exec => "exec storm",
        Workload::Connect => "connect storm",
    };
    let tree = if case.tracked { "tracked" } else { "untracked" };
    format!("{workload}, {tree}")
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

fn median_of(timings: &[StormTiming], f: impl Fn(&StormTiming) -> f64) -> Option<f64> {
    median(&timings.iter().map(f).collect::<Vec<_>>())
}

/// Wall time: median with / median without, minus one.
fn slowdown(m: &Measurements, i: usize) -> Option<f64> {
    Some(median_of(&m.with[i], |t| t.wall)? / median_of(&m.without[i], |t| t.wall)? - 1.0)
}

/// The same on the storm's CPU time.
fn cpu_slowdown(m: &Measurements, i: usize) -> Option<f64> {
    Some(median_of(&m.with[i], |t| t.cpu)? / median_of(&m.without[i], |t| t.cpu)? - 1.0)
}

fn limit(case: &Case) -> f64 {
    if case.tracked {
        TRACKED_MAX_SLOWDOWN
    } else {
        UNTRACKED_MAX_SLOWDOWN
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

fn workload_detail(m: &Measurements, case: &Case) -> String {
    match case.workload {
        Workload::Exec => format!("{} × fork+exec /bin/true", grouped(m.args_execs.into())),
        Workload::Connect => format!(
            "{} × TCP connect to 127.0.0.1",
            grouped(m.args_connects.into())
        ),
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
    let max_tracked_rate = CASES
        .iter()
        .zip(&m.counts)
        .filter(|(case, _)| case.tracked)
        .flat_map(|(_, counts)| counts.iter())
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
    let commit = crate::cmd::quiet_output(
        Command::new("git")
            .args(["-C"])
            .arg(crate::cmd::workspace_root())
            .args(["rev-parse", "--short", "HEAD"]),
    )
    .unwrap_or_default();
    let _ = writeln!(md, "### Overhead (`cargo xtask bench`)\n");
    let _ = writeln!(
        md,
        "Linux {}, {cpus} CPUs, commit {}; {} alternating repetitions with and without the \
         sensor, medians; load average {} before, {} after.\n",
        kernel.trim(),
        commit.trim(),
        m.reps,
        m.load_before,
        m.load_after,
    );
    let _ = writeln!(
        md,
        "| workload | without sensor | with sensor | slowdown | CPU-time slowdown | events/s | target | result |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---|---|");
    for (i, case) in CASES.iter().enumerate() {
        let secs = |v: &[StormTiming]| {
            median_of(v, |t| t.wall).map_or_else(|| "n/a".into(), |s| format!("{s:.3} s"))
        };
        let cpu_slow =
            cpu_slowdown(m, i).map_or_else(|| "n/a".into(), |s| format!("{:+.1} %", s * 100.0));
        let (slow, result) = match slowdown(m, i) {
            Some(s) => (format!("{:+.1} %", s * 100.0), pass(s < limit(case))),
            None => ("n/a".into(), "FAIL"),
        };
        let rates: Vec<f64> = m.counts[i].iter().map(|c| c.events_per_s()).collect();
        let rate = match median(&rates) {
            Some(r) if case.tracked => grouped(r.round() as u64),
            Some(r) => format!("{} (expect 0)", grouped(r.round() as u64)),
            None => "n/a".into(),
        };
        let _ = writeln!(
            md,
            "| {} ({}) | {} | {} | {slow} | {cpu_slow} | {rate} | < {:.0} % | {result} |",
            case_name(case),
            workload_detail(m, case),
            secs(&m.without[i]),
            secs(&m.with[i]),
            limit(case) * 100.0,
        );
    }

    let _ = writeln!(
        md,
        "\nSlowdown: median wall time with the sensor over median without, minus one. CPU-time \
         slowdown: the same on the storm's own CPU time (user+system of the driver and its \
         children, where the sensor's kernel programs are charged), steadier on a busy machine. \
         Events/s: kernel events the sensor read per second of storm, from its `sensor_stats` \
         (untracked storms should cause none)."
    );

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
            grouped(m.args_connects.into()),
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
    if !t.drop_reasons.is_empty() {
        let reasons: Vec<String> = t
            .drop_reasons
            .iter()
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        let _ = writeln!(
            md,
            "\nCounters by reason (all runs; {} counts records cut short, not lost): {}.",
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
    let mut lines = Vec::new();
    for tracked in [false, true] {
        let limit_pct = if tracked {
            TRACKED_MAX_SLOWDOWN
        } else {
            UNTRACKED_MAX_SLOWDOWN
        } * 100.0;
        let mut ok = true;
        let mut parts = Vec::new();
        for (i, case) in CASES
            .iter()
            .enumerate()
            .filter(|(_, c)| c.tracked == tracked)
        {
            match slowdown(m, i) {
                Some(s) => {
                    ok &= s < limit(case);
                    parts.push(format!("{} {:+.1} %", case_name(case), s * 100.0));
                }
                None => {
                    ok = false;
                    parts.push(format!("{} n/a", case_name(case)));
                }
            }
        }
        let tree = if tracked { "tracked" } else { "untracked" };
        lines.push(format!(
            "{} {tree} slowdown < {limit_pct:.0} %: {}",
            pass(ok),
            parts.join(", ")
        ));
    }
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
