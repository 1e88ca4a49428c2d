//! Every build request is seen, also when dockerd's HTTP server took the request's first byte
//! with its one-byte background read (Go's net/http does that between requests on a kept-alive
//! connection: the docker CLI sends `HEAD /_ping`, then `POST /build` on the same connection).
//! Before this was handled, about one build in twelve was missed.
use std::time::Duration;

use sensor_tests::*;

#[test]
fn consecutive_builds_are_all_seen() {
    require_root("loading eBPF programs");
    Dockerd::ensure();
    ensure_base_image("localbase:1");
    let state = tempfile::tempdir().unwrap();
    let mut sensor = SensorProcess::start(&[
        "--state-dir",
        state.path().to_str().unwrap(),
        "--kinds",
        "sensor,builds",
    ])
    .unwrap();
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
