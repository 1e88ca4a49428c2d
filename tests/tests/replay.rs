//! `sensor replay` over a stream recorded live with `--raw` gives the same build records as the
//! live run did.
use std::{process::Command, time::Duration};

use sensor_tests::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

/// The fields of a build record that do not depend on when or where it was written (the
/// evidence ids point at the recorded records, so they must match too).
fn essence(r: &Value) -> Value {
    let mut r = r.clone();
    let o = r.as_object_mut().unwrap();
    for k in ["id", "ts", "host"] {
        o.remove(k);
    }
    r
}

/// A build_started/build_finished of one of this test's builds (other builds run on the
/// shared dockerd meanwhile).
fn is_own_build_record(r: &Value, tags: &[String]) -> bool {
    (r["kind"] == "build_started" || r["kind"] == "build_finished")
        && tags.iter().any(|t| has_tag(r, t))
}

#[test]
fn replay_of_a_raw_recording_gives_the_live_build_records() {
    require_root("loading eBPF programs");
    Dockerd::ensure();
    ensure_base_image("localbase:1");
    let peer = TestHost::new("replay");
    peer.serve_http(8080, &[("payload", b"x")]);
    let state = tempfile::tempdir().unwrap();
    let mut sensor =
        SensorProcess::start(&["--raw", "--state-dir", state.path().to_str().unwrap()]).unwrap();

    let mut tags = Vec::new();
    for builder in [Builder::BuildKit, Builder::Legacy] {
        let tag = unique_tag("replay");
        BuildContext::new(&format!(
            "FROM localbase:1\nRUN wget -q -O /x {}\nRUN exit 0\n",
            peer.url(8080, "payload")
        ))
        .build(&tag, builder);
        tags.push(tag);
    }
    for tag in &tags {
        sensor
            .wait_for(|r| is_build_finished_for(r, tag), WAIT)
            .unwrap();
    }
    assert!(sensor.stop().unwrap().success());
    let live: Vec<Value> = sensor
        .records()
        .into_iter()
        .filter(|r| is_own_build_record(r, &tags))
        .collect();
    assert_eq!(live.len(), 4, "{live:?}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("raw.ndjson");
    std::fs::write(&file, sensor.raw_lines().join("\n") + "\n").unwrap();
    let out = Command::new(sensor_bin())
        .arg("replay")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replayed: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| is_own_build_record(r, &tags))
        .collect();
    let live: Vec<Value> = live.iter().map(essence).collect();
    let replayed: Vec<Value> = replayed.iter().map(essence).collect();
    assert_eq!(replayed, live);
    for tag in &tags {
        remove_image(tag);
    }
}
