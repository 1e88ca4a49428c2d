//! Tests of the harness itself: the engine, the base image, test hosts reached from containers
//! and from both image builders, and the sensor-process plumbing (with a stand-in binary).
//! None of them needs the sensor.
//!
//! Run as root: `cargo test -p sensor-tests -- --test-threads=1`.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sensor_tests::{
    BuildContext, Builder, Cmd, DOCKER_SOCKET, Dockerd, SensorProcess, TestHost, docker_cli,
    ensure_base_image, remove_image, require_root, run, unique_tag,
};

const BASE: &str = "localbase:1";

/// `SENSOR_TEST_ARGS` adds its flags to a test's own, except those the test sets itself.
#[test]
fn extra_sensor_args_add_only_flags_the_test_does_not_set() {
    use sensor_tests::with_extra_args;
    let got = with_extra_args(
        &["--runtime-name", "x"],
        "--kernel-hooks narrow --no-file-events",
    );
    assert_eq!(
        got,
        [
            "--runtime-name",
            "x",
            "--kernel-hooks",
            "narrow",
            "--no-file-events"
        ]
    );
    let got = with_extra_args(&["--kernel-hooks=syscall"], " --kernel-hooks  narrow ");
    assert_eq!(got, ["--kernel-hooks=syscall"]);
    let got = with_extra_args(&["--kernel-hooks", "socket"], "--kernel-hooks=narrow --x");
    assert_eq!(got, ["--kernel-hooks", "socket", "--x"]);
    assert_eq!(with_extra_args(&["a"], ""), ["a"]);
}

#[test]
fn dockerd_runs_a_container_from_the_base_image() {
    require_root("starting dockerd");
    let dockerd = Dockerd::ensure();
    assert!(dockerd.socket().exists());
    assert!(dockerd.pid().is_some(), "no dockerd pid file");
    ensure_base_image(BASE);
    // Idempotent: a second call finds the image.
    ensure_base_image(BASE);

    run(docker_cli(), &["run", "--rm", BASE, "true"]);
    let out = run(
        docker_cli(),
        &[
            "run",
            "--rm",
            BASE,
            "sh",
            "-c",
            "for a in sh wget true sleep cat nc httpd; do \
               for d in /bin /sbin /usr/bin /usr/sbin; do [ -e $d/$a ] && echo $d/$a; done; \
             done; echo PATH=$PATH",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for applet in ["sh", "wget", "true", "sleep", "cat", "nc", "httpd"] {
        assert!(
            text.contains(&format!("/{applet}\n")),
            "no {applet} link in the image: {text}"
        );
    }
    assert!(
        text.contains("PATH=/usr/local/sbin:"),
        "PATH not set in the image: {text}"
    );
}

#[test]
fn engine_api_answers_on_the_unix_socket() {
    require_root("talking to dockerd");
    Dockerd::ensure();
    let out = run(
        "curl",
        &[
            "-sS",
            "--max-time",
            "10",
            "--unix-socket",
            DOCKER_SOCKET,
            "http://x/v1.41/version",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let version = v["Version"].as_str().unwrap_or_default();
    assert!(!version.is_empty(), "no Version in {v}");
    assert_eq!(v["Os"], "linux", "{v}");
}

#[test]
fn test_host_serves_http_and_is_removed_on_drop() {
    require_root("creating a network namespace");
    let host = TestHost::new("http");
    host.serve_http(
        8080,
        &[("payload", b"hello from the test host\n"), ("d/e", b"x")],
    );
    let body = http_get(&host.ip().to_string(), 8080, "/payload");
    assert!(body.ends_with("hello from the test host\n"), "{body}");

    let netns = host.netns().to_string();
    let ip = host.ip();
    // The namespace has a default route via the host side.
    let routes = host.exec("ip", &["route"]);
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert!(
        routes.contains(&format!("default via {}", host.gateway())),
        "{routes}"
    );

    // Its own FORWARD rules: to and from docker0 and other test hosts, nothing else.
    let comment = format!("sensor-tests:{}", host_side_interface(&host));
    let rules = forward_rules_with(&comment);
    assert_eq!(rules.len(), 5, "{rules:?}");
    assert!(rules.last().unwrap().ends_with("-j DROP"), "{rules:?}");

    drop(host);
    assert!(
        forward_rules_with(&comment).is_empty(),
        "FORWARD rules left behind"
    );
    let list = run("ip", &["netns", "list"]);
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&netns),
        "netns {netns} still there"
    );
    let addrs = run("ip", &["-4", "addr"]);
    assert!(
        !String::from_utf8_lossy(&addrs.stdout).contains(&ip.to_string()),
        "address {ip} still on the host"
    );
}

#[test]
fn two_test_hosts_get_distinct_subnets() {
    require_root("creating a network namespace");
    let a = TestHost::new("a");
    let b = TestHost::new("b");
    assert_ne!(a.ip(), b.ip());
    assert_ne!(a.netns(), b.netns());
    // Each reaches the other through the host.
    let sink = b.listen_tcp(9000);
    let out = a.exec(
        "busybox",
        &["sh", "-c", &format!("echo hi | nc -w 2 {} 9000", b.ip())],
    );
    assert!(out.status.success(), "{out:?}");
    let peers = sink.wait_accepted(1, Duration::from_secs(5)).unwrap();
    assert_eq!(peers[0].ip(), std::net::IpAddr::V4(a.ip()), "{peers:?}");
}

#[test]
fn container_connects_to_a_test_host_listener() {
    require_root("starting dockerd and creating a network namespace");
    Dockerd::ensure();
    ensure_base_image(BASE);
    let host = TestHost::new("tcp");
    let sink = host.listen_tcp(7000);
    run(
        docker_cli(),
        &[
            "run",
            "--rm",
            BASE,
            "sh",
            "-c",
            &format!("echo hello | nc -w 3 {} 7000", host.ip()),
        ],
    );
    let peers = sink.wait_accepted(1, Duration::from_secs(10)).unwrap();
    // docker0 traffic is masqueraded: the test host sees the host side of its veth.
    assert_eq!(
        peers[0].ip(),
        std::net::IpAddr::V4(host.gateway()),
        "{peers:?}"
    );
}

#[test]
fn buildkit_build_step_reaches_a_test_host() {
    build_step_reaches_a_test_host(Builder::BuildKit);
}

#[test]
fn legacy_build_step_reaches_a_test_host() {
    build_step_reaches_a_test_host(Builder::Legacy);
}

fn build_step_reaches_a_test_host(builder: Builder) {
    require_root("starting dockerd and creating a network namespace");
    Dockerd::ensure();
    ensure_base_image(BASE);
    let host = TestHost::new("build");
    host.serve_http(8081, &[("payload", b"payload-for-the-build\n")]);
    let ctx = BuildContext::new(&format!(
        "FROM {BASE}\n\
         RUN wget -q -O /x {url} && grep -q payload-for-the-build /x\n",
        url = host.url(8081, "payload")
    ));
    let tag = unique_tag(&format!("harness-{builder:?}"));
    let started = Instant::now();
    ctx.build(&tag, builder);
    eprintln!("{builder:?} build took {:?}", started.elapsed());
    let out = run(docker_cli(), &["run", "--rm", &tag, "cat", "/x"]);
    assert_eq!(out.stdout, b"payload-for-the-build\n");
    remove_image(&tag);
}

#[test]
fn unique_tags_are_accepted_by_docker() {
    require_root("talking to dockerd");
    Dockerd::ensure();
    ensure_base_image(BASE);
    let tag = unique_tag("Harness Tag");
    run(docker_cli(), &["tag", BASE, &tag]);
    run(docker_cli(), &["image", "inspect", &tag]);
    remove_image(&tag);
}

// --- SensorProcess, with a shell script standing in for the sensor (no root needed) ---

/// Writes an executable stand-in for `sensor` that runs `body` when called as `<bin> run`.
fn fake_sensor(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("fake-sensor");
    fs::write(
        &path,
        format!("#!/bin/sh\n[ \"$1\" = run ] || {{ echo 'expected run' >&2; exit 64; }}\nshift\n{body}\n"),
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn sensor_process_collects_records_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let bin = fake_sensor(
        dir.path(),
        r#"trap 'echo "{\"kind\":\"sensor_stopped\"}"; exit 0' TERM
echo "args: $*" >&2
echo '{"schema_version":1,"ts":"t","host":"h","kind":"process_seeded","id":"1"}'
echo '{"schema_version":1,"ts":"t","host":"h","kind":"sensor_started","id":"2"}'
sleep 0.3
echo '{"schema_version":1,"ts":"t","host":"h","kind":"build_started","id":"3","tag":"x:1"}'
while :; do sleep 0.05; done"#,
    );
    let mut sensor = SensorProcess::start_bin(&bin, &["--flag", "v"]).unwrap();
    assert!(sensor.pid() > 0);
    let rec = sensor
        .wait_for(|r| r["kind"] == "build_started", Duration::from_secs(5))
        .unwrap();
    assert_eq!(rec["tag"], "x:1");
    // Records before the call count too.
    sensor
        .wait_for(|r| r["kind"] == "process_seeded", Duration::from_millis(10))
        .unwrap();
    let err = sensor
        .wait_for(|r| r["kind"] == "never", Duration::from_millis(300))
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("within"), "{msg}");
    assert!(
        msg.contains("process_seeded, sensor_started, build_started"),
        "{msg}"
    );
    assert!(msg.contains("args: --flag v"), "stderr tail missing: {msg}");
    sensor
        .expect_none(|r| r["kind"] == "never", Duration::from_millis(100))
        .unwrap();
    assert!(
        sensor
            .expect_none(|r| r["kind"] == "build_started", Duration::ZERO)
            .is_err()
    );

    let status = sensor.stop().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(sensor.records_of_kind("sensor_stopped").len(), 1);
    assert_eq!(sensor.records().len(), 4);
    assert_eq!(sensor.raw_lines().len(), 4);
}

#[test]
fn sensor_process_fails_on_a_line_that_is_not_json() {
    let dir = tempfile::tempdir().unwrap();
    let bin = fake_sensor(
        dir.path(),
        r#"echo '{"kind":"sensor_started"}'
sleep 0.3
echo 'this is not json'
echo '{"kind":"later"}'
sleep 30"#,
    );
    let sensor = SensorProcess::start_bin(&bin, &[]).unwrap();
    let err = sensor
        .wait_for(|r| r["kind"] == "later", Duration::from_secs(5))
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("this is not json"), "{msg}");
    assert!(msg.contains("line 2"), "{msg}");
    let records = catch_unwind(AssertUnwindSafe(|| sensor.records()));
    assert!(records.is_err(), "records() did not fail on a bad line");
}

#[test]
fn sensor_process_drop_fails_on_an_unseen_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let bin = fake_sensor(
        dir.path(),
        r#"echo '{"kind":"sensor_started"}'
sleep 0.2
echo '{"kind":"truncat'
sleep 30"#,
    );
    let sensor = SensorProcess::start_bin(&bin, &[]).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    // A test that never looks at the records again still fails.
    let dropped = catch_unwind(AssertUnwindSafe(move || drop(sensor)));
    let msg = *dropped
        .expect_err("drop did not fail on a bad line")
        .downcast::<String>()
        .unwrap();
    assert!(msg.contains(r#"{"kind":"truncat"#), "{msg}");
}

#[test]
fn sensor_process_start_fails_on_a_bad_line_before_sensor_started() {
    let dir = tempfile::tempdir().unwrap();
    let bin = fake_sensor(
        dir.path(),
        "echo 'Starting...'
sleep 30",
    );
    let err = SensorProcess::start_bin(&bin, &[]).unwrap_err();
    assert!(format!("{err:#}").contains("Starting..."), "{err:#}");
}

#[test]
fn sensor_process_reports_an_early_exit_with_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let bin = fake_sensor(dir.path(), "echo 'cannot load probes: EPERM' >&2\nexit 3");
    let started = Instant::now();
    let err = SensorProcess::start_bin(&bin, &[]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited for the timeout"
    );
    assert!(msg.contains("sensor_started"), "{msg}");
    assert!(msg.contains("cannot load probes: EPERM"), "{msg}");
    assert!(msg.contains("closed its stdout"), "{msg}");
}

#[test]
fn sensor_process_reports_a_missed_stop() {
    let dir = tempfile::tempdir().unwrap();
    let bin = fake_sensor(
        dir.path(),
        r#"trap '' TERM
echo '{"kind":"sensor_started"}'
while :; do sleep 0.1; done"#,
    );
    let mut sensor = SensorProcess::start_bin(&bin, &[]).unwrap();
    let started = Instant::now();
    let err = sensor.stop().unwrap_err();
    assert!(format!("{err:#}").contains("did not exit"), "{err:#}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn cmd_kills_on_timeout() {
    let started = Instant::now();
    let err = Cmd::new("sleep")
        .arg("30")
        .timeout(Duration::from_millis(200))
        .output()
        .unwrap_err();
    assert!(format!("{err}").contains("did not finish"));
    assert!(started.elapsed() < Duration::from_secs(10));
}

fn forward_rules_with(comment: &str) -> Vec<String> {
    let out = run("iptables", &["-w", "-S", "FORWARD"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(comment))
        .map(String::from)
        .collect()
}

/// The host-side veth of a test host: the interface that holds its gateway address.
fn host_side_interface(host: &TestHost) -> String {
    let out = run(
        "ip",
        &[
            "-o",
            "-4",
            "addr",
            "show",
            "to",
            &host.gateway().to_string(),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

/// A plain HTTP/1.0 GET; returns the whole response.
fn http_get(host: &str, port: u16, path: &str) -> String {
    let mut s = TcpStream::connect((host, port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// A [`sensor_tests::Scenario`] removes what the test made through it (images, containers,
/// test hosts, its directory) when the test panics half-way.
#[test]
fn scenario_cleans_up_after_a_panicking_test() {
    require_root("starting dockerd and creating a network namespace");
    let made = std::sync::Mutex::new(None);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let sc = sensor_tests::Scenario::new("the scenario test");
        let tag = sc.build(
            "scenario-cleanup",
            &format!("FROM {BASE}\nRUN echo x > /x\n"),
            Builder::BuildKit,
        );
        let name = sc.container_name("scenario-cleanup");
        run(
            docker_cli(),
            &["run", "-d", "--name", &name, &tag, "sleep", "60"],
        );
        let host = sc.host("cleanup");
        *made.lock().unwrap() = Some((tag, name, host.netns().to_string(), sc.dir().to_path_buf()));
        panic!("the test fails here");
    }));
    assert!(outcome.is_err(), "the scenario's test did not panic");
    let (tag, name, netns, dir) = made.lock().unwrap().take().expect("nothing was made");
    let exists = |args: &[&str]| {
        Cmd::new(docker_cli())
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    assert!(
        !exists(&["container", "inspect", &name]),
        "container {name} left behind"
    );
    assert!(
        !exists(&["image", "inspect", &tag]),
        "image {tag} left behind"
    );
    let namespaces = run("ip", &["netns", "list"]);
    assert!(
        !String::from_utf8_lossy(&namespaces.stdout)
            .split_whitespace()
            .any(|n| n == netns),
        "network namespace {netns} left behind"
    );
    assert!(!dir.exists(), "{} left behind", dir.display());
}
