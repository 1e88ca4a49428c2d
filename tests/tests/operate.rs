//! Operating the sensor: sinks (rotating file, TCP/unix stream with reconnect and counted
//! overflow), the metrics endpoint, `sensor config check`, SIGHUP with a bad policy, least
//! privilege (exactly the documented capabilities, as a non-root uid) and container ids.
//!
//! No Vector or Fluent Bit package is installable here (Debian, PyPI, npm, crates.io), so the
//! stream sinks are read by a real socket reader in the test, as a collector would read them.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::{fs::PermissionsExt, net::UnixListener},
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use sensor_tests::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

fn marker(prefix: &str) -> String {
    unique_tag(prefix).replace(':', "-")
}

/// A container that runs one command with `marker` in its argv.
fn docker_run_marker(marker: &str) {
    run(
        docker_cli(),
        &[
            "run",
            "--rm",
            "--network",
            "none",
            "localbase:1",
            "sh",
            "-c",
            &format!("echo {marker} >/dev/null"),
        ],
    );
}

/// A temporary directory for a test that needs no scenario, removed at its end.
fn scratch_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("sensor-operate-{name}-"))
        .tempdir()
        .unwrap()
}

fn final_stats(sensor: &SensorProcess) -> Value {
    sensor
        .records_of_kind("sensor_stats")
        .into_iter()
        .rfind(|r| r["final_report"] == true)
        .expect("a final sensor_stats record")
}

fn sum(v: &Value) -> u64 {
    v.as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0)
}

/// Lines read by a socket reader thread, as a collector would read them.
#[derive(Clone, Default)]
struct Collected(Arc<Mutex<Vec<String>>>);

impl Collected {
    fn read_from(&self, r: impl Read + Send + 'static) -> thread::JoinHandle<()> {
        let lines = self.0.clone();
        thread::spawn(move || {
            for l in BufReader::new(r).lines() {
                let Ok(l) = l else { break };
                lines.lock().unwrap().push(l);
            }
        })
    }
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.lines().iter().any(|l| l.contains(needle)) {
                return true;
            }
            thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

#[test]
fn config_check_accepts_the_example_and_names_the_line_of_an_error() {
    let bin = sensor_bin();
    let example = workspace_root().join("deploy/config.example.toml");
    let out = Command::new(&bin)
        .args(["config", "check"])
        .arg(&example)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("config ") && stdout.contains("is valid"),
        "{stdout}"
    );

    let policy = workspace_root().join("deploy/policy.example.toml");
    let out = Command::new(&bin)
        .args(["config", "check"])
        .arg(&policy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("policy "));

    let scratch = scratch_dir("config");
    let dir = scratch.path().to_path_buf();
    for (name, text, expect) in [
        (
            "syntax.toml",
            "stats_interval = 5\nraw = = true\n",
            "line 2",
        ),
        (
            "unknown.toml",
            "stats_interval = 5\n\nmetric_addr = \"127.0.0.1:1\"\n",
            "line 3 (`metric_addr`): unknown key",
        ),
        ("value.toml", "ringbuf_mib = 3\n", "line 1 (`ringbuf_mib`)"),
        (
            "sink.toml",
            "[[sinks]]\ntype = \"tcp\"\naddr = \"no-port\"\n",
            "line 1 (`sinks`)",
        ),
        (
            "policy.toml",
            "[rules.deploy_soon_after_build]\nwindow_secs = 0\n",
            "window_secs",
        ),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        let out = Command::new(&bin)
            .args(["config", "check"])
            .arg(&p)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{name}: one line expected:\n{stderr}"
        );
        assert!(
            stderr.contains(expect),
            "{name}: {expect:?} not in {stderr}"
        );
        assert!(out.stdout.is_empty());
    }

    // `sensor run --config` refuses the same file before loading anything.
    let out = Command::new(&bin)
        .args(["run", "--config"])
        .arg(dir.join("unknown.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("unknown key `metric_addr`"), "{stderr}");
}

#[test]
fn file_sink_rotates_by_size_without_cutting_or_losing_lines() {
    let sc = Scenario::new("the file test (dockerd, eBPF)");
    let dir = sc.dir().to_path_buf();
    let path = dir.join("records.ndjson");
    let max = 16 * 1024;
    let file_sink = format!("file:{}?max_size={max}&keep=1000", path.display());
    // The file takes everything; stdout only the sensor's own records, for the harness.
    let mut sensor = sc.start_sensor(&[
        "--sink",
        &file_sink,
        "--sink",
        "stdout?kinds=sensor",
        "--stats-interval",
        "1",
    ]);
    let m = marker("rotate");
    run(
        docker_cli(),
        &[
            "run",
            "--rm",
            "--network",
            "none",
            "localbase:1",
            "sh",
            "-c",
            &format!("for i in $(seq 150); do sh -c \": {m} $i\"; done"),
        ],
    );
    thread::sleep(Duration::from_secs(2));
    assert!(sensor.stop().unwrap().success());

    let stats = final_stats(&sensor);
    let drops = &stats["drops"];
    assert_eq!(drops["sink_file_queue_full"], 0, "{stats}");
    assert_eq!(drops["sink_file_write_failed"], 0, "{stats}");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        files.len() >= 3,
        "expected rotation into several files: {files:?}"
    );
    // Oldest first: records.ndjson.N .. .1, then records.ndjson.
    files.sort_by_key(|p| {
        let n = p
            .extension()
            .and_then(|e| e.to_str())
            .and_then(|e| e.parse::<u64>().ok());
        std::cmp::Reverse(n.unwrap_or(0))
    });
    let mut ids = Vec::new();
    let mut markers = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(
            text.len() as u64 <= max,
            "{} has {} bytes",
            f.display(),
            text.len()
        );
        assert!(text.ends_with('\n'), "{} ends mid-line", f.display());
        for l in text.lines() {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: cut or bad line ({e}): {l}", f.display()));
            ids.push(v["id"].as_u64().unwrap());
            // The inner `sh -c` of each iteration, not the loop itself.
            markers += usize::from(
                v["kind"] == "process_exec" && argv_has(&v, &m) && !argv_has(&v, "seq"),
            );
        }
    }
    assert_eq!(markers, 150, "every exec of the container is in the files");
    // Every record the sensor wrote (its own count, plus the final stats itself) is in the
    // files once, in order.
    assert_eq!(
        ids.len() as u64,
        sum(&stats["records"]) + 1,
        "files hold {} lines; stats: {stats}",
        ids.len()
    );
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids out of order across rotated files"
    );
}

#[test]
fn stream_sinks_reconnect_when_the_collector_comes_up_and_count_overflow() {
    let sc = Scenario::new("the stream test (dockerd, eBPF)");
    let dir = sc.dir().to_path_buf();
    let sock = dir.join("collector.sock");
    let unix_collector = UnixListener::bind(&sock).unwrap();
    let unix_lines = Collected::default();
    {
        let lines = unix_lines.clone();
        thread::spawn(move || {
            if let Ok((c, _)) = unix_collector.accept() {
                lines.read_from(c).join().ok();
            }
        });
    }
    // The TCP collector is down at first: nothing listens on the port.
    let port = free_loopback_port();
    let tcp = format!("tcp:127.0.0.1:{port}?queue=20");
    let unix = format!("unix:{}?kinds=process_exec,sensor", sock.display());
    let mut sensor = sc.start_sensor(&[
        "--sink",
        &tcp,
        "--sink",
        &unix,
        "--sink",
        "stdout",
        "--stats-interval",
        "1",
    ]);

    // More records than the TCP queue holds while it is down: the overflow is counted.
    let early = marker("early");
    run(
        docker_cli(),
        &[
            "run",
            "--rm",
            "--network",
            "none",
            "localbase:1",
            "sh",
            "-c",
            &format!("for i in $(seq 60); do sh -c \": {early} $i\"; done"),
        ],
    );
    sensor
        .wait_for(|r| r["kind"] == "process_exec" && argv_has(r, &early), WAIT)
        .unwrap();
    assert!(
        unix_lines.wait_for(&early, Duration::from_secs(10)),
        "the unix collector got no {early}"
    );

    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let tcp_lines = Collected::default();
    let (conn, _) = listener.accept().unwrap();
    let reader = tcp_lines.read_from(conn);
    let late = marker("late");
    docker_run_marker(&late);
    assert!(
        tcp_lines.wait_for(&late, WAIT),
        "the TCP collector did not get {late} after it came up"
    );
    assert!(sensor.stop().unwrap().success());
    reader.join().unwrap();

    let stats = final_stats(&sensor);
    let full = stats["drops"]["sink_tcp_queue_full"].as_u64().unwrap();
    assert!(
        full > 0,
        "60 execs into a queue of 20 with the collector down: {stats}"
    );
    assert_eq!(stats["drops"]["sink_unix_queue_full"], 0, "{stats}");
    let got = tcp_lines.lines();
    // What was queued before the collector came up was delivered first.
    assert!(
        got.first()
            .is_some_and(|l| l.contains("\"kind\":\"sensor_started\"")),
        "{:?}",
        got.first()
    );
    for l in &got {
        serde_json::from_str::<Value>(l)
            .unwrap_or_else(|e| panic!("bad line from the TCP sink ({e}): {l}"));
    }
    // Nothing silently lost: delivered + counted overflow = everything written (+ the final stats).
    assert_eq!(
        got.len() as u64 + full,
        sum(&stats["records"]) + 1,
        "tcp got {}, overflow {full}: {stats}",
        got.len()
    );
    // The unix sink's kind filter held.
    assert!(
        unix_lines
            .lines()
            .iter()
            .all(|l| l.contains("\"kind\":\"process_exec\"") || l.contains("\"kind\":\"sensor_"))
    );
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn metrics_endpoint_serves_counters_health_and_readiness() {
    let sc = Scenario::new("the metrics test (dockerd, eBPF)");
    let port = free_loopback_port();
    let addr = format!("127.0.0.1:{port}");
    let mut sensor = sc.start_sensor(&["--metrics-addr", &addr, "--stats-interval", "0"]);
    assert_eq!(http_get(port, "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(http_get(port, "/readyz"), (200, "ready\n".to_string()));
    assert_eq!(http_get(port, "/nope").0, 404);
    let m = marker("metrics");
    docker_run_marker(&m);
    sensor
        .wait_for(|r| r["kind"] == "process_exec" && argv_has(r, &m), WAIT)
        .unwrap();
    thread::sleep(Duration::from_millis(2500));
    let (code, text) = http_get(port, "/metrics");
    assert_eq!(code, 200);
    assert!(
        metric(&text, "sensor_events_total{kind=\"exec\"}").unwrap_or(0) > 0,
        "{text}"
    );
    assert!(
        metric(&text, "sensor_records_total{kind=\"process_exec\"}").unwrap_or(0) > 0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "sensor_ringbuf_size_bytes"),
        Some(8 << 20),
        "{text}"
    );
    assert!(
        metric(&text, "sensor_ringbuf_read_bytes_total").unwrap_or(0) > 0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "sensor_sink_queue_capacity{sink=\"stdout\"}"),
        Some(65536),
        "{text}"
    );
    assert!(
        metric(&text, "sensor_sink_queue_depth{sink=\"stdout\"}").is_some(),
        "{text}"
    );
    assert!(
        metric(
            &text,
            "sensor_drops_total{reason=\"sink_stdout_queue_full\"}"
        )
        .is_some(),
        "{text}"
    );
    assert!(
        metric(&text, "sensor_builds_total{phase=\"started\"}").is_some(),
        "{text}"
    );
    assert!(metric(&text, "sensor_findings_total").is_some(), "{text}");
    assert_eq!(metric(&text, "sensor_ready"), Some(1));
    assert!(sensor.stop().unwrap().success());
}

#[test]
fn sighup_with_a_broken_policy_keeps_the_old_one_and_keeps_running() {
    let sc = Scenario::new("the sighup test (dockerd, eBPF)");
    let dir = sc.dir().to_path_buf();
    let policy = dir.join("policy.toml");
    std::fs::copy(workspace_root().join("deploy/policy.example.toml"), &policy).unwrap();
    let mut sensor = sc.start_sensor(&[
        "--policy",
        policy.to_str().unwrap(),
        "--stats-interval",
        "0",
    ]);
    let pid = sensor.pid() as i32;

    std::fs::write(&policy, "[builders]\nusers = [\"ci\"\n").unwrap();
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let before = marker("hup-bad");
    docker_run_marker(&before);
    sensor
        .wait_for(
            |r| r["kind"] == "process_exec" && argv_has(r, &before),
            WAIT,
        )
        .unwrap();
    let stderr = std::fs::read_to_string(sensor.stderr_path()).unwrap();
    let line = stderr
        .lines()
        .find(|l| l.contains("keeping the previous policy"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        line.contains(policy.to_str().unwrap()) && line.contains("line "),
        "{line}"
    );

    std::fs::write(&policy, "[builders]\nusers = [\"ci\"]\n").unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let after = marker("hup-good");
    docker_run_marker(&after);
    sensor
        .wait_for(|r| r["kind"] == "process_exec" && argv_has(r, &after), WAIT)
        .unwrap();
    thread::sleep(Duration::from_millis(300));
    let stderr = std::fs::read_to_string(sensor.stderr_path()).unwrap();
    assert!(stderr.contains("policy reloaded"), "{stderr}");
    assert!(sensor.stop().unwrap().success());
    // Nothing lost around the reloads: the kernel never found the ring buffer full, and
    // nothing was dropped on the way out.
    let stats = final_stats(&sensor);
    let drops = stats["drops"].as_object().unwrap();
    for (reason, n) in drops {
        if reason == "ringbuf_full" || reason.starts_with("sink_") || reason.starts_with("decode_")
        {
            assert_eq!(n, 0, "{reason}: {stats}");
        }
    }
    assert!(drops.contains_key("ringbuf_full"), "{stats}");
}

/// The documented capability set (docs/operations.md), as setpriv's list.
const CAPS: &str = "+bpf,+perfmon,+sys_ptrace,+dac_read_search";

/// A wrapper that runs the sensor as `uid`, with exactly `caps` (inheritable, ambient and
/// bounding set), for [`SensorProcess::start_bin`].
fn setpriv_wrapper(dir: &Path, uid: u32, caps: &str) -> PathBuf {
    let script = dir.join(format!("sensor-as-{uid}.sh"));
    let caps_arg = if caps.is_empty() {
        "-all".to_string()
    } else {
        format!("-all,{caps}")
    };
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec setpriv --reuid={uid} --regid={uid} --clear-groups --inh-caps={caps_arg} \
             --ambient-caps={caps_arg} --bounding-set={caps_arg} -- {} \"$@\"\n",
            sensor_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// The lineage store's directory, owned by `uid` (the one thing the sensor writes).
fn state_dir_for(dir: &Path, uid: u32) -> String {
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(uid), Some(uid)).unwrap();
    state.to_str().unwrap().to_string()
}

#[test]
fn runs_with_only_the_documented_capabilities_as_a_non_root_user() {
    require_root("dropping privileges with setpriv");
    let sc = Scenario::new("the caps test (dockerd, eBPF)");
    let dir = sc.dir().to_path_buf();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let wrapper = setpriv_wrapper(&dir, 65534, CAPS);
    let state = state_dir_for(&dir, 65534);
    let mut sensor =
        SensorProcess::start_bin(&wrapper, &["--stats-interval", "0", "--state-dir", &state])
            .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", sensor.pid())).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("65534")),
        "{status}"
    );

    // A detached container: its exec carries the container's full id, from the cgroup.
    let m = marker("caps");
    // Labelled as kubelet labels a pod's containers (cri-dockerd): the pod is reported too.
    let out = run(
        docker_cli(),
        &[
            "run",
            "-d",
            "--network",
            "none",
            "--label",
            "io.kubernetes.pod.name=web-0",
            "--label",
            "io.kubernetes.pod.namespace=shop",
            "localbase:1",
            "sh",
            "-c",
            &format!("echo {m} >/dev/null; sleep 2"),
        ],
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let inspected = run(docker_cli(), &["inspect", "--format", "{{.Id}}", &id]);
    let full = String::from_utf8_lossy(&inspected.stdout)
        .trim()
        .to_string();
    assert_eq!(full.len(), 64, "{full}");
    let exec = sensor
        .wait_for(|r| r["kind"] == "process_exec" && argv_has(r, &m), WAIT)
        .unwrap();
    assert_eq!(exec["process"]["container_id"], full.as_str(), "{exec}");
    assert_eq!(exec["process"]["role"], "descendant", "{exec}");
    assert_eq!(
        exec["process"]["pod"],
        serde_json::json!({"name": "web-0", "namespace": "shop"}),
        "{exec}"
    );
    run(docker_cli(), &["rm", "-f", &full]);
    // With CAP_SYS_PTRACE the runtime's executable is readable: dockerd's records carry `exe`.
    assert!(
        sensor
            .records()
            .iter()
            .any(|r| r["process"]["comm"] == "dockerd" && r["process"]["exe"].is_string())
            || sensor
                .records()
                .iter()
                .any(|r| r["process"]["exe"].is_string()),
        "no record carries an exe"
    );
    assert!(sensor.stop().unwrap().success());
    let stderr = std::fs::read_to_string(sensor.stderr_path()).unwrap();
    assert!(
        !stderr.contains("CAP_SYS_PTRACE"),
        "no capability warning expected:\n{stderr}"
    );
}

#[test]
fn without_the_capabilities_it_fails_with_one_clear_line() {
    require_root("dropping privileges with setpriv");
    let scratch = scratch_dir("nocaps");
    let dir = scratch.path().to_path_buf();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut seen = BTreeMap::new();
    for (uid, caps, expect) in [
        (65534, "", "missing capabilities CAP_BPF, CAP_PERFMON"),
        (0, "", "missing capabilities CAP_BPF, CAP_PERFMON"),
        (
            65534,
            "+bpf,+sys_ptrace,+dac_read_search",
            "missing capabilities CAP_PERFMON",
        ),
        (65534, "+bpf,+perfmon,+sys_ptrace", "cannot read tracefs"),
    ] {
        let wrapper = setpriv_wrapper(&dir, uid, caps);
        let out = Command::new(&wrapper)
            .args(["run", "--stats-interval", "0"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(
            out.status.code(),
            Some(1),
            "uid {uid} caps {caps:?}: {stderr}"
        );
        assert!(
            out.stdout.is_empty(),
            "uid {uid} caps {caps:?}: wrote records"
        );
        assert_eq!(
            stderr.lines().count(),
            1,
            "uid {uid} caps {caps:?}: one line expected:\n{stderr}"
        );
        assert!(
            stderr.starts_with("sensor: error: ") && stderr.contains(expect),
            "uid {uid} caps {caps:?}: {stderr}"
        );
        seen.insert(format!("{uid} {caps}"), stderr);
    }
    // Without CAP_SYS_PTRACE it runs, and says once what is missing from the records.
    let wrapper = setpriv_wrapper(&dir, 65534, "+bpf,+perfmon,+dac_read_search");
    let state = state_dir_for(&dir, 65534);
    let mut sensor =
        SensorProcess::start_bin(&wrapper, &["--stats-interval", "0", "--state-dir", &state])
            .unwrap();
    assert!(sensor.stop().unwrap().success());
    let stderr = std::fs::read_to_string(sensor.stderr_path()).unwrap();
    assert_eq!(stderr.matches("no CAP_SYS_PTRACE").count(), 1, "{stderr}");
}
