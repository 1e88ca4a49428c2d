//! A real collector on the TCP sink (issue 12): Debian's rsyslog (imtcp in, omfile out, the
//! message written as received) receives `--sink tcp:127.0.0.1:PORT`. Every record the sensor
//! wrote arrives, byte for byte; rsyslog stopped and started again in mid-stream loses nothing
//! that the sink's drop counters (`sensor_stats.drops`, `sink_tcp_*`) do not report.
//!
//! The stream comes from a tracked process tree of our own (`--runtime-name`): a shell script
//! that runs `/bin/true` many times, before, during and after the collector's outage. Other
//! records (other developers' containers on this shared host) are in the stream too; they are
//! compared like the rest.
//!
//! Run as root with the release sensor built:
//! `cargo build --release -p sensor && cargo test -p sensor-tests --test collector -- --test-threads=1`
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use sensor_tests::{Cmd, Scenario, SensorProcess, free_loopback_port, tail_file};
use serde_json::Value;

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";
/// The generator's name: tracked through `--runtime-name`, so its children are in the stream.
const GEN: &str = "collgen";

/// rsyslogd in the foreground with a configuration of its own (no system inputs or outputs).
struct Rsyslog {
    child: Option<Child>,
    dir: PathBuf,
}

impl Rsyslog {
    fn start(dir: &Path, port: u16) -> Rsyslog {
        assert!(
            Path::new(RSYSLOGD).is_file(),
            "{RSYSLOGD} not found: `apt-get install -y rsyslog` (cargo xtask setup)"
        );
        let conf = dir.join("rsyslog.conf");
        // maxMessageSize: records can be long (build_finished with its steps). %rawmsg% is the
        // line as received; omfile appends it with a newline, flushed at every transaction end.
        std::fs::write(
            &conf,
            format!(
                "global(workDirectory=\"{d}\" maxMessageSize=\"1m\")\n\
                 module(load=\"imtcp\")\n\
                 template(name=\"asreceived\" type=\"string\" string=\"%rawmsg%\\n\")\n\
                 ruleset(name=\"sensor\") {{\n\
                   action(type=\"omfile\" file=\"{d}/records.ndjson\" template=\"asreceived\" flushOnTXEnd=\"on\")\n\
                 }}\n\
                 input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\" ruleset=\"sensor\")\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("rsyslogd.log"))
            .unwrap();
        let child = Command::new(RSYSLOGD)
            .args(["-n", "-f"])
            .arg(&conf)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut r = Rsyslog {
            child: Some(child),
            dir: dir.to_path_buf(),
        };
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)).is_err() {
            if let Some(Ok(Some(status))) = r.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "rsyslogd exited ({status}):\n{}",
                    tail_file(&r.dir.join("rsyslogd.log"), 20)
                );
            }
            assert!(
                Instant::now() < deadline,
                "rsyslogd did not listen on {addr} within 20 s:\n{}",
                tail_file(&r.dir.join("rsyslogd.log"), 20)
            );
            thread::sleep(Duration::from_millis(50));
        }
        r
    }

    /// SIGTERM, as `systemctl restart rsyslog` sends, and wait for the exit.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill only sends a signal, to our own child that has not been reaped.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("rsyslogd did not exit within 10 s of SIGTERM");
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        // The next instance writes its own pid file.
        let _ = std::fs::remove_file(self.dir.join("rsyslogd.pid"));
    }

    fn output(&self) -> PathBuf {
        self.dir.join("records.ndjson")
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.output())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs the generator: `n` children (`/bin/true`), each a process_exec and a process_exit.
fn generate(script: &Path, n: u32) {
    Cmd::new(script)
        .arg(n.to_string())
        .timeout(Duration::from_secs(120))
        .run();
}

fn wait_lines(r: &Rsyslog, at_least: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let n = r.lines().len();
        if n >= at_least || Instant::now() > deadline {
            return n;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn rsyslog_receives_every_record_and_a_restart_loses_only_what_is_counted() {
    let sc = Scenario::new("the collector test (eBPF)");
    let dir = sc.dir();
    let script = dir.join(GEN);
    std::fs::write(
        &script,
        "#!/bin/sh\ni=0\nwhile [ \"$i\" -lt \"$1\" ]; do /bin/true; i=$((i+1)); done\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_loopback_port();
    let mut rsyslog = Rsyslog::start(dir, port);
    let sink = format!("tcp:127.0.0.1:{port}");
    let mut sensor = sc.start_sensor(&[
        "--host",
        "collector",
        "--state-dir",
        dir.join("state").to_str().unwrap(),
        "--runtime-name",
        GEN,
        "--stats-interval",
        "1",
        "--no-file-events",
        "--sink",
        "stdout",
        "--sink",
        &sink,
    ]);

    // Before the outage: everything arrives.
    generate(&script, 300);
    // Waits until the stream holds `n` exits of the generator's children.
    let wait_exits = |sensor: &SensorProcess, n: usize| {
        let seen = Cell::new(0);
        sensor
            .wait_for(
                |r| {
                    if r["kind"] == "process_exit" && r["process"]["comm"] == "true" {
                        seen.set(seen.get() + 1);
                    }
                    seen.get() >= n
                },
                Duration::from_secs(30),
            )
            .unwrap_or_else(|e| panic!("{} of {n} exits: {e:#}", seen.get()));
    };
    wait_exits(&sensor, 300);
    let before = sensor.raw_lines().len();
    let got = wait_lines(&rsyslog, before, Duration::from_secs(20));
    assert!(got >= before, "rsyslog has {got} lines of {before}");

    // The collector restarts while the stream goes on: the generator runs across the stop and
    // the start; records written meanwhile wait in the sink's queue (or are counted), then go to
    // the new instance.
    let generator = {
        let script = script.clone();
        thread::spawn(move || generate(&script, 600))
    };
    wait_lines(&rsyslog, before + 100, Duration::from_secs(20));
    rsyslog.stop();
    thread::sleep(Duration::from_millis(500));
    let mut rsyslog = Rsyslog::start(dir, port);
    generator.join().unwrap();
    generate(&script, 100);
    wait_exits(&sensor, 1000);
    assert!(sensor.stop().unwrap().success());
    let written = sensor.raw_lines();
    let records = sensor.records();
    let total = written.len();
    wait_lines(&rsyslog, total, Duration::from_secs(20));
    rsyslog.stop();

    // What the sink reported lost: the final sensor_stats, and what was still queued at exit
    // (counted after that record: on stderr).
    let stats = records
        .iter()
        .rev()
        .find(|r| r["kind"] == "sensor_stats" && r["final_report"] == true)
        .expect("no final sensor_stats");
    let drops = &stats["drops"];
    let counted: u64 = ["sink_tcp_queue_full", "sink_tcp_write_failed"]
        .iter()
        .map(|k| drops[*k].as_u64().unwrap())
        .sum();
    let stderr = std::fs::read_to_string(sensor.stderr_path()).unwrap_or_default();
    assert!(
        !stderr.contains("sink_tcp_unsent_at_exit"),
        "records left undelivered at exit:\n{stderr}"
    );

    // Received: one line per record, as written; a repeat or a cut line is possible at the
    // broken connection, never a changed one.
    let received = rsyslog.lines();
    let mut by_key: BTreeMap<(String, u64), usize> = BTreeMap::new();
    let mut cut = 0;
    for l in &received {
        match serde_json::from_str::<Value>(l) {
            Ok(v) => {
                *by_key
                    .entry((
                        v["ts"].as_str().unwrap_or("").to_string(),
                        v["id"].as_u64().unwrap_or(0),
                    ))
                    .or_default() += 1;
            }
            Err(_) => cut += 1,
        }
    }
    let received_set: BTreeSet<&str> = received.iter().map(String::as_str).collect();
    let missing: Vec<&String> = written
        .iter()
        .filter(|l| !received_set.contains(l.as_str()))
        .collect();
    let repeated = by_key.values().filter(|n| **n > 1).count();
    eprintln!(
        "collector: {total} records written, {} lines received ({repeated} repeated, {cut} cut), \
         {} missing, {counted} counted as dropped by the sink",
        received.len(),
        missing.len()
    );
    assert!(total >= 2000, "only {total} records in the stream");
    assert_eq!(
        missing.len() as u64,
        counted,
        "records lost across the collector's restart that sensor_stats.drops does not account for \
         (first: {:?}); drops {drops}",
        missing.first()
    );
    // Every received line that parses is a line the sensor wrote.
    let written_set: BTreeSet<&str> = written.iter().map(String::as_str).collect();
    for l in &received {
        if serde_json::from_str::<Value>(l).is_ok() {
            assert!(
                written_set.contains(l.as_str()),
                "a line the sensor never wrote: {l}"
            );
        }
    }
}
