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

/// Whether `r` is a build record of one of `tags` (other developers build on this host too).
fn own_build_record(r: &Value, tags: &[String]) -> bool {
    (r["kind"] == "build_started" || r["kind"] == "build_finished")
        && tags.iter().any(|t| has_tag(r, t))
}

#[test]
fn replay_of_a_raw_recording_gives_the_live_build_records() {
    let sc = Scenario::new("loading eBPF programs");
    let peer = sc.host("replay");
    peer.serve_http(8080, &[("payload", b"x")]);
    let mut sensor = sc.start_sensor(&["--raw", "--state-dir", &sc.state_dir()]);

    let mut tags = Vec::new();
    for builder in [Builder::BuildKit, Builder::Legacy] {
        tags.push(sc.build(
            "replay",
            &format!(
                "FROM {BASE_IMAGE}\nRUN wget -q -O /x {}\nRUN exit 0\n",
                peer.url(8080, "payload")
            ),
            builder,
        ));
    }
    for tag in &tags {
        build_record(&sensor, "build_finished", tag, WAIT);
    }
    assert!(sensor.stop().unwrap().success());
    let live: Vec<Value> = sensor
        .records()
        .into_iter()
        .filter(|r| own_build_record(r, &tags))
        .collect();
    assert_eq!(live.len(), 4, "{live:?}");

    let file = sc.path("raw.ndjson");
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
        .filter(|r| own_build_record(r, &tags))
        .collect();
    let live: Vec<Value> = live.iter().map(essence).collect();
    let replayed: Vec<Value> = replayed.iter().map(essence).collect();
    assert_eq!(replayed, live);
}
