//! Build sessions, live, beyond `docker build` on the main engine: a raw `POST /build` over an
//! Engine API TCP listener (T1612), a sensor started in the middle of a build, buildah, and
//! build-arg redaction in the raw records.
//!
//! Run as root after `cargo build --release -p sensor`:
//! `cargo test -p sensor-tests --test builds_more -- --test-threads=1`.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use sensor_tests::{
    BuildContext, Builder, Cmd, Dockerd, SensorProcess, TcpDockerd, TestHost, docker_cli,
    ensure_base_image, remove_image, require_root, run, unique_tag,
};

const BASE: &str = "localbase:1";
const WAIT: Duration = Duration::from_secs(90);

fn has_tag(r: &Value, tag: &str) -> bool {
    r["params"]["tags"].as_array().is_some_and(|a| a.iter().any(|t| t == tag))
        || r["tags"].as_array().is_some_and(|a| a.iter().any(|t| t == tag))
}

fn finished(sensor: &SensorProcess, tag: &str) -> Value {
    sensor
        .wait_for(|r| r["kind"] == "build_finished" && has_tag(r, tag), WAIT)
        .unwrap_or_else(|e| panic!("no build_finished for {tag}: {e:#}"))
}

fn started(sensor: &SensorProcess, tag: &str) -> Value {
    sensor
        .wait_for(|r| r["kind"] == "build_started" && has_tag(r, tag), WAIT)
        .unwrap_or_else(|e| panic!("no build_started for {tag}: {e:#}"))
}

fn steps(f: &Value) -> Vec<(String, Option<i64>)> {
    f["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["command"].as_str().unwrap().to_string(), s["exit_code"].as_i64()))
        .collect()
}

fn image_id(tag: &str) -> String {
    let out = run(docker_cli(), &["image", "inspect", "--format", "{{.Id}}", tag]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A tar of a directory holding only `Dockerfile`, written next to it.
fn context_tar(dir: &Path, dockerfile: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    let tar = dir.join("context.tar");
    run("tar", &["-C", dir.to_str().unwrap(), "-cf", tar.to_str().unwrap(), "Dockerfile"]);
    tar
}

/// T1612: a raw `POST /v1.41/build` sent with curl from a test host's network namespace to a
/// second dockerd's TCP listener on this host's test interface.
#[test]
fn post_build_over_the_tcp_api_from_a_remote_address() {
    require_root("running the sensor and a second dockerd");
    Dockerd::ensure();
    let daemon = TcpDockerd::start(BASE);
    let mut sensor = SensorProcess::start(&[
        "--stats-interval",
        "0",
        "--kinds",
        "sensor_started,build_started,build_finished,finding,api_request",
    ])
    .expect("sensor start");
    let tag = unique_tag("builds-tcp");
    let dir = tempfile::tempdir().unwrap();
    let tar = context_tar(dir.path(), &format!("FROM {BASE}\nARG TOKEN\nRUN echo built-over-tcp\n"));
    let listener = daemon.listener();
    let url = format!(
        "http://{listener}/v1.41/build?t={tag}&nocache=1&buildargs=%7B%22TOKEN%22%3A%22tcp-s3cr3t%22%7D"
    );
    let out = daemon.curl_from_client(
        &[
            "-sS".into(),
            "--max-time".into(),
            "240".into(),
            "-X".into(),
            "POST".into(),
            "-H".into(),
            "Content-Type: application/x-tar".into(),
            "--data-binary".into(),
            format!("@{}", tar.display()),
            url,
        ],
        Duration::from_secs(260),
    );
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.contains("Successfully built"), "{body}\n{}", String::from_utf8_lossy(&out.stderr));

    let client_ip = daemon.client_host().ip().to_string();
    let s = started(&sensor, &tag);
    let f = finished(&sensor, &tag);
    eprintln!("{f}");
    assert_eq!(s["build_id"], f["build_id"]);
    for r in [&s, &f] {
        assert_eq!(r["builder"], "legacy", "{r}");
        assert_eq!(r["client"]["transport"], "tcp", "{r}");
        assert_eq!(r["client"]["addr"], client_ip.as_str(), "{r}");
        assert!(r["client"]["port"].as_u64().is_some_and(|p| p > 0), "{r}");
        assert_eq!(r["client"]["listener"], listener.to_string().as_str(), "{r}");
        assert!(r["user_agent"].as_str().is_some_and(|u| u.starts_with("curl/")), "{r}");
        assert_eq!(r["partial"], false, "{r}");
    }
    assert_eq!(f["status"], "succeeded", "{f}");
    assert_eq!(f["params"]["build_args"]["TOKEN"], "<redacted>", "{f}");
    assert_eq!(f["image_id"].as_str().unwrap(), daemon.image_id(&tag));
    assert_eq!(steps(&f), [("/bin/sh -c echo built-over-tcp".to_string(), Some(0))]);
    // The request came to the second engine, not to the main one.
    let req = sensor
        .wait_for(|r| r["kind"] == "api_request" && r["endpoint"] == "/build" && r["client"]["transport"] == "tcp", WAIT)
        .unwrap();
    assert_eq!(req["process"]["pid"], daemon.pid(), "{req}");

    // The detection engine's T1612 finding names the remote address.
    let finding = sensor
        .wait_for(|r| r["kind"] == "finding" && r["rule"] == "build_via_tcp_api" && r["build_id"] == f["build_id"], Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("no build_via_tcp_api finding: {e:#}"));
    eprintln!("{finding}");
    assert_eq!(finding["details"]["remote_addr"], client_ip.as_str(), "{finding}");
    assert_eq!(finding["details"]["listener"], listener.to_string().as_str(), "{finding}");
    assert!(finding["summary"].as_str().unwrap().contains(&client_ip), "{finding}");
    assert!(finding["attack"].as_array().unwrap().iter().any(|a| a == "T1612"), "{finding}");

    sensor.stop().unwrap();
    for line in sensor.raw_lines() {
        assert!(!line.contains("tcp-s3cr3t"), "a build-arg value leaked: {line}");
    }
    drop(daemon);
    assert!(!Path::new(sensor_tests::TCP_DOCKERD_SOCKET).exists());
}
