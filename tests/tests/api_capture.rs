//! Every build request is seen, also when dockerd's HTTP server took the request's first byte
//! with its one-byte background read (Go's net/http does that between requests on a kept-alive
//! connection: the docker CLI sends `HEAD /_ping`, then `POST /build` on the same connection).
//! Before this was handled, about one build in twelve was missed.
use std::{process::Command, time::Duration};

use sensor_tests::*;

/// A sensor writing `kinds`, with a state directory of its own (kept while the guard lives).
fn build_sensor(kinds: &str) -> (tempfile::TempDir, SensorProcess) {
    let state = tempfile::tempdir().unwrap();
    let sensor = SensorProcess::start(&[
        "--state-dir",
        state.path().to_str().unwrap(),
        "--kinds",
        kinds,
    ])
    .unwrap();
    (state, sensor)
}

#[test]
fn consecutive_builds_are_all_seen() {
    require_root("loading eBPF programs");
    Dockerd::ensure();
    ensure_base_image("localbase:1");
    let (_state, mut sensor) = build_sensor("sensor,builds");
    let ctx = BuildContext::new("FROM localbase:1\nRUN true\n");
    let tags: Vec<String> = (0..16).map(|_| unique_tag("seen")).collect();
    for tag in &tags {
        ctx.build(tag, Builder::Legacy);
    }
    for tag in &tags {
        sensor
            .wait_for(|r| is_build_finished_for(r, tag), Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("build {tag} not seen: {e:#}"));
    }
    assert!(sensor.stop().unwrap().success());
    for tag in &tags {
        remove_image(tag);
    }
}

/// A `POST /build` whose headers pass 4 KiB (dockerd's HTTP server reads 4 KiB at a time, so
/// the request arrives in several reads): the request is captured from its first read, with its
/// client, and the build is reconstructed whole from the request and the response stream.
#[test]
fn build_request_with_headers_past_4_kib_is_captured() {
    require_root("loading eBPF programs");
    Dockerd::ensure();
    ensure_base_image("localbase:1");
    let (_state, mut sensor) = build_sensor("sensor,builds,api_request");
    let ctx = BuildContext::new("FROM localbase:1\nRUN true\n");
    let tar = ctx.path().with_extension("tar");
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
    let tag = unique_tag("big-headers");
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
    let req = sensor
        .wait_for(
            |r| r["kind"] == "api_request" && r["client"]["pid"].as_u64() == Some(curl_pid),
            Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(req["method"], "POST", "{req}");
    assert_eq!(req["endpoint"], "/build", "{req}");
    assert_eq!(req["client"]["exe"], "/usr/bin/curl", "{req}");
    assert_eq!(
        req["truncated"], true,
        "a 6 KB header cannot fit the 2 KiB capture: {req}"
    );
    let finished = sensor
        .wait_for(|r| is_build_finished_for(r, &tag), Duration::from_secs(60))
        .unwrap();
    assert_eq!(finished["status"], "succeeded", "{finished}");
    let id = run(docker_cli(), &["image", "inspect", "-f", "{{.Id}}", &tag]);
    assert_eq!(
        finished["image_id"].as_str(),
        Some(String::from_utf8_lossy(&id.stdout).trim()),
        "{finished}"
    );
    assert_eq!(
        finished["client"]["pid"].as_u64(),
        Some(curl_pid),
        "{finished}"
    );
    assert!(sensor.stop().unwrap().success());
    remove_image(&tag);
}

/// A client that sends its request and exits at once (an attacker's one-shot script): it is
/// gone from /proc before the sensor reads its request, yet the request names its executable,
/// command line, start time and cgroup, taken in the kernel when it connected.
#[test]
fn a_client_gone_before_its_request_is_read_is_still_described() {
    require_root("loading eBPF programs");
    Dockerd::ensure();
    let mut sensor = SensorProcess::start(&["--kinds", "sensor,api_request,connect"]).unwrap();
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
    let req = sensor
        .wait_for(
            |r| {
                r["kind"] == "api_request"
                    && r["query"].as_str().is_some_and(|q| q.contains(&marker))
            },
            Duration::from_secs(60),
        )
        .unwrap();
    let c = &req["client"];
    assert_eq!(c["pid"].as_u64(), Some(pid), "{req}");
    assert_eq!(c["exe"].as_str(), Some(python.as_str()), "{req}");
    assert!(
        c["argv"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s == marker.as_str())),
        "{req}"
    );
    assert!(
        c["comm"].as_str().is_some_and(|s| s.starts_with("python")),
        "{req}"
    );
    assert!(c["start_time_ns"].as_u64().is_some_and(|t| t > 0), "{req}");
    assert!(
        c["cgroup"].as_str().is_some_and(|s| s.starts_with('/')),
        "{req}"
    );
    // The connect record of the same client carries the same executable.
    let conn = sensor
        .wait_for(
            |r| r["kind"] == "connect" && r["process"]["pid"].as_u64() == Some(pid),
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(
        conn["process"]["exe"].as_str(),
        Some(python.as_str()),
        "{conn}"
    );
    assert_eq!(conn["path"], DOCKER_SOCKET);
    assert!(sensor.stop().unwrap().success());
}
