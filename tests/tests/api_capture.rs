//! Every build request is seen, also when dockerd's HTTP server took the request's first byte
//! with its one-byte background read (Go's net/http does that between requests on a kept-alive
//! connection: the docker CLI sends `HEAD /_ping`, then `POST /build` on the same connection).
//! Before this was handled, about one build in twelve was missed.
use std::{process::Command, time::Duration};

use sensor_tests::*;

const WAIT: Duration = Duration::from_secs(60);

/// The scenario and a sensor writing `kinds`, with the scenario's state directory.
fn build_sensor(kinds: &str) -> (Scenario, SensorProcess) {
    let sc = Scenario::new("loading eBPF programs");
    let sensor = sc.start_sensor(&["--state-dir", &sc.state_dir(), "--kinds", kinds]);
    (sc, sensor)
}

#[test]
fn consecutive_builds_are_all_seen() {
    let (sc, mut sensor) = build_sensor("sensor,builds");
    let ctx = BuildContext::new(&format!("FROM {BASE_IMAGE}\nRUN true\n"));
    let tags: Vec<String> = (0..16).map(|_| sc.tag("seen")).collect();
    for tag in &tags {
        ctx.build(tag, Builder::Legacy);
    }
    for tag in &tags {
        build_record(&sensor, "build_finished", tag, WAIT);
    }
    assert!(sensor.stop().unwrap().success());
}

/// A `POST /build` whose headers pass 4 KiB (dockerd's HTTP server reads 4 KiB at a time, so
/// the request arrives in several reads): the request is captured from its first read, with its
/// client, and the build is reconstructed whole from the request and the response stream.
#[test]
fn build_request_with_headers_past_4_kib_is_captured() {
    let (sc, mut sensor) = build_sensor("sensor,builds,api_request");
    let ctx = BuildContext::new(&format!("FROM {BASE_IMAGE}\nRUN true\n"));
    let tar = sc.path("context.tar");
    run(
        "tar",
        &[
            "-C",
            ctx.path().to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            ".",
        ],
    );
    let tag = sc.tag("big-headers");
    let pad = format!("X-Pad: {}", "p".repeat(6000));
    let url = format!("http://x/v1.41/build?t={}", tag.replace(':', "%3A"));
    let mut curl = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--unix-socket", DOCKER_SOCKET])
        .args(["-H", "Content-Type: application/x-tar", "-H", &pad])
        .args(["--data-binary", &format!("@{}", tar.display()), &url])
        .spawn()
        .unwrap();
    let curl_pid = curl.id() as u64;
    assert!(curl.wait().unwrap().success());
    let req = sensor.expect_record("api_request", &[("client.pid", eq(curl_pid))], WAIT);
    // (truncated: a 6 KB header cannot fit the 2 KiB capture.)
    assert_fields(
        &req,
        &[
            ("method", eq("POST")),
            ("endpoint", eq("/build")),
            ("client.exe", eq("/usr/bin/curl")),
            ("truncated", eq(true)),
        ],
    );
    let finished = build_record(&sensor, "build_finished", &tag, WAIT);
    assert_fields(
        &finished,
        &[
            ("status", eq("succeeded")),
            ("image_id", eq(sc.image_id(&tag))),
            ("client.pid", eq(curl_pid)),
        ],
    );
    assert!(sensor.stop().unwrap().success());
}

/// A client that sends its request and exits at once (an attacker's one-shot script): it is
/// gone from /proc before the sensor reads its request, yet the request names its executable,
/// command line, start time and cgroup, taken in the kernel when it connected.
#[test]
fn a_client_gone_before_its_request_is_read_is_still_described() {
    let sc = Scenario::new("loading eBPF programs");
    let mut sensor = sc.start_sensor(&["--kinds", "sensor,api_request,connect"]);
    let marker = unique_tag("one-shot").replace(':', "-");
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_UNIX)\n\
         s.connect('{DOCKER_SOCKET}')\n\
         s.sendall(b'GET /v1.41/version?m={marker} HTTP/1.1\\r\\nHost: x\\r\\nUser-Agent: one-shot\\r\\n\\r\\n')\n"
    );
    // The interpreter itself, not a wrapper (pyenv's shims are scripts that exec it).
    let real = run(
        "python3",
        &[
            "-c",
            "import os, sys; print(os.path.realpath(sys.executable))",
        ],
    );
    let python = String::from_utf8_lossy(&real.stdout).trim().to_string();
    let mut py = Command::new(&python)
        .args(["-c", &script, &marker])
        .spawn()
        .unwrap();
    let pid = py.id() as u64;
    assert!(py.wait().unwrap().success());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the client must be gone (reaped) before its records are read"
    );
    let req = sensor.expect_record("api_request", &[("query", contains(marker.as_str()))], WAIT);
    assert_fields(
        &req,
        &[
            ("client.pid", eq(pid)),
            ("client.exe", eq(python.as_str())),
            ("client.argv", contains(marker.as_str())),
            ("client.comm", starts_with("python")),
            (
                "client.start_time_ns",
                satisfies("a time > 0", |t| t.as_u64().is_some_and(|t| t > 0)),
            ),
            ("client.cgroup", starts_with("/")),
        ],
    );
    // The connect record of the same client carries the same executable.
    let conn = sensor.expect_record(
        "connect",
        &[("process.pid", eq(pid))],
        Duration::from_secs(10),
    );
    assert_fields(
        &conn,
        &[
            ("process.exe", eq(python.as_str())),
            ("path", eq(DOCKER_SOCKET)),
        ],
    );
    assert!(sensor.stop().unwrap().success());
}
