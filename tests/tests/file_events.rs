//! File events from fanotify (`sensor run --file-events=fanotify`), live: no syscall hook, the
//! kernel's file capture off. A build step's writes and renames inside its container
//! (overlayfs) come as `file_write` from a descendant of the daemon; the Dockerfile each
//! builder receives still arrives in `build_dockerfile`; a process outside the runtime trees
//! produces nothing.
//!
//! Run as root after `cargo build --release -p sensor`:
//! `cargo test -p sensor-tests --test file_events -- --test-threads=1`.
use std::time::Duration;

use sensor_tests::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

/// The engine and base image ready, and a sensor in fanotify mode (with its state directory,
/// removed when dropped).
fn start_fanotify_sensor() -> (tempfile::TempDir, SensorProcess) {
    require_root("loading eBPF programs and fanotify marks");
    Dockerd::ensure();
    ensure_base_image("localbase:1");
    let state = tempfile::tempdir().unwrap();
    let sensor = SensorProcess::start(&[
        "--file-events=fanotify",
        "--raw",
        "--stats-interval",
        "0",
        "--state-dir",
        state.path().to_str().unwrap(),
    ])
    .expect("sensor start");
    let started = sensor
        .wait_for(|r| r["kind"] == "sensor_started", WAIT)
        .unwrap();
    let probes = started["probes"].as_array().unwrap();
    assert!(
        probes.iter().any(|p| p == "fanotify_close_write"),
        "{started}"
    );
    (state, sensor)
}

fn is_file_write(r: &Value, op: &str, suffix: &str) -> bool {
    r["kind"] == "file_write"
        && r["op"] == op
        && r["path"].as_str().is_some_and(|p| p.ends_with(suffix))
}

fn wait_file_write(sensor: &SensorProcess, op: &str, suffix: &str) -> Value {
    sensor
        .wait_for(|r| is_file_write(r, op, suffix), WAIT)
        .unwrap_or_else(|e| panic!("no {op} of {suffix}: {e:#}"))
}

#[test]
fn build_steps_writes_and_dockerfiles_come_from_fanotify() {
    let (_state, mut sensor) = start_fanotify_sensor();
    let mut tags = Vec::new();
    for builder in [Builder::BuildKit, Builder::Legacy] {
        let tag = unique_tag("fanotify");
        // A name of its own per build: BuildKit's cache cannot skip the step.
        let marker = tag.replace([':', '/'], "-");
        let text = format!(
            "FROM localbase:1\n# fanotify {marker}\nRUN mkdir -p /usr/local/bin && echo x > /usr/local/bin/{marker} && echo y > /usr/local/bin/{marker}.tmp && mv /usr/local/bin/{marker}.tmp /usr/local/bin/{marker}.moved\n"
        );
        let out = BuildContext::new(&text).build(&tag, builder);
        assert!(out.status.success(), "{builder:?} build failed");
        tags.push(tag.clone());
        let finished = build_record(&sensor, "build_finished", &tag, WAIT);
        assert_eq!(finished["status"], "succeeded", "{finished}");
        let build_id = finished["build_id"].as_str().unwrap().to_string();

        let written = format!("/usr/local/bin/{marker}");
        let w = wait_file_write(&sensor, "close_write", &written);
        // The step's shell, in the container: a descendant of the daemon, the path as the
        // container sees it, no open(2) flags in this mode.
        assert_eq!(w["process"]["role"], "descendant", "{w}");
        assert_eq!(w["path"], written.as_str(), "{w}");
        assert!(w["flags"].is_null(), "{w}");
        let moved = format!("/usr/local/bin/{marker}.moved");
        let m = wait_file_write(&sensor, "rename", &moved);
        assert_eq!(m["process"]["role"], "descendant", "{m}");

        let d = sensor
            .wait_for(
                |r| r["kind"] == "build_dockerfile" && r["build_id"] == build_id.as_str(),
                WAIT,
            )
            .unwrap_or_else(|e| panic!("{builder:?}: no build_dockerfile: {e:#}"));
        assert_eq!(d["text"], text.as_str(), "{builder:?}: {d}");
        assert_eq!(d["truncated"], false, "{d}");
        // Its source: file_content read at the daemon's close, fd -1 (no writer descriptor).
        let ids: Vec<u64> = d["record_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let records = sensor.records();
        let content: Vec<&Value> = records
            .iter()
            .filter(|r| r["kind"] == "file_content" && ids.contains(&r["id"].as_u64().unwrap()))
            .collect();
        assert!(!content.is_empty(), "{d}");
        assert!(content.iter().all(|c| c["fd"] == -1), "{content:?}");
    }
    // The kernel's file capture is off: no open_write records at all.
    let records = sensor.records();
    assert!(
        !records
            .iter()
            .any(|r| r["kind"] == "file_write" && r["op"] == "open_write"),
        "the kernel's file capture ran in fanotify mode"
    );
    assert_records_match_schema(&records);
    assert!(sensor.stop().unwrap().success());
    for t in &tags {
        remove_image(t);
    }
}

#[test]
fn untracked_writes_produce_nothing() {
    let (_state, mut sensor) = start_fanotify_sensor();
    // This test process is in no runtime tree: its writes, renames and build files are not
    // reported. Written first, then a tracked write and rename: each fanotify group's queue
    // is in order, so once the tracked ones are out, the untracked ones were read (and
    // dropped) before them.
    let dir = tempfile::Builder::new()
        .prefix("sensor-fanotify-untracked-")
        .tempdir()
        .unwrap();
    let f = dir.path().join("data");
    std::fs::write(&f, b"x").unwrap();
    std::fs::rename(&f, dir.path().join("data2")).unwrap();
    std::fs::write(dir.path().join("Dockerfile"), b"FROM scratch\n").unwrap();
    let name = unique_tag("fanotify-ctl").replace([':', '/'], "-");
    let out = Cmd::new(docker_cli())
        .args([
            "run",
            "--rm",
            "localbase:1",
            "sh",
            "-c",
            &format!("echo x > /tmp/{name} && echo y > /tmp/{name}.t && mv /tmp/{name}.t /tmp/{name}.moved"),
        ])
        .run();
    assert!(out.status.success(), "docker run failed");
    let ctl = format!("/tmp/{name}");
    wait_file_write(&sensor, "close_write", &ctl);
    // Renames come from the other group: a tracked one there as well.
    wait_file_write(&sensor, "rename", &format!("{ctl}.moved"));
    let records = sensor.records();
    let prefix = dir.path().to_str().unwrap();
    let leaked: Vec<&Value> = records
        .iter()
        .filter(|r| {
            (r["kind"] == "file_write" || r["kind"] == "file_content")
                && r["path"].as_str().is_some_and(|p| p.starts_with(prefix))
        })
        .collect();
    assert!(leaked.is_empty(), "untracked writes reported: {leaked:?}");
    let stopped = sensor.stop().unwrap();
    assert!(stopped.success());
    // Nothing was lost on the way.
    let stats = sensor
        .wait_for(
            |r| r["kind"] == "sensor_stats" && r["final_report"] == true,
            WAIT,
        )
        .unwrap();
    for reason in ["fanotify_queue_overflow", "fanotify_read_failed"] {
        assert_eq!(stats["drops"][reason], 0, "{stats}");
    }
    assert!(
        stats["events"]["fanotify_close_write"].as_u64().unwrap() >= 3,
        "{stats}"
    );
}
