//! Overlapping builds live: two builds at once (BuildKit and legacy, or two BuildKit), each
//! downloading from its own test host, while a container started on the host talks to a third
//! one. Each build's outbound list holds its own host only.
//!
//! Network traffic goes only to test hosts in network namespaces these tests create. Every
//! record the sensor writes is validated against schema/records.schema.json.
//!
//! Run as root, one test at a time, with the release sensor built:
//! `cargo build --release -p sensor && cargo test -p sensor-tests --test detect_overlapping_builds -- --test-threads=1`

use std::thread;
use std::time::{Duration, Instant};

use sensor_tests::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// Issue 5: each build's outbound list holds its own host only.
#[test]
fn overlapping_buildkit_and_legacy_builds_keep_their_own_outbound() {
    overlapping_builds_keep_their_own_outbound(Builder::BuildKit, Builder::Legacy);
}

#[test]
fn overlapping_buildkit_builds_keep_their_own_outbound() {
    overlapping_builds_keep_their_own_outbound(Builder::BuildKit, Builder::BuildKit);
}

fn builder_name(b: Builder) -> &'static str {
    if b == Builder::BuildKit {
        "buildkit"
    } else {
        "legacy"
    }
}

fn overlapping_builds_keep_their_own_outbound(builder_a: Builder, builder_b: Builder) {
    let sc = Scenario::new("overlapping builds (dockerd, network namespaces, eBPF)");
    let host_a = sc.host("ovl-a");
    let host_b = sc.host("ovl-b");
    let host_c = sc.host("ovl-c");
    for h in [&host_a, &host_b, &host_c] {
        h.serve_http(8091, &[("payload", b"payload\n")]);
    }
    let ips: Vec<String> = [&host_a, &host_b, &host_c]
        .iter()
        .map(|h| h.ip().to_string())
        .collect();
    assert!(
        ips[0] != ips[1] && ips[1] != ips[2] && ips[0] != ips[2],
        "{ips:?}"
    );
    let sensor = sc.start_sensor(&["--state-dir", &sc.state_dir()]);

    // Each RUN fetches several times over a few seconds, so the two builds' traffic interleaves.
    let fetches =
        |url: &str| format!("for i in 1 2 3 4 5; do wget -q -O /dev/null {url}; sleep 1; done");
    let tag_a = sc.tag(&format!("detect-ovl-a-{}", builder_name(builder_a)));
    let tag_b = sc.tag(&format!("detect-ovl-b-{}", builder_name(builder_b)));
    let ctx_a = BuildContext::new(&format!(
        "FROM {BASE_IMAGE}\nRUN {}\n",
        fetches(&host_a.url(8091, "payload"))
    ));
    let ctx_b = BuildContext::new(&format!(
        "FROM {BASE_IMAGE}\nRUN {}\n",
        fetches(&host_b.url(8091, "payload"))
    ));
    let name = sc.container_name("detect-ovl");
    let url_c = host_c.url(8091, "payload");
    thread::scope(|s| {
        let a = s.spawn(|| ctx_a.build(&tag_a, builder_a));
        let b = s.spawn(|| ctx_b.build(&tag_b, builder_b));
        sc.docker(&[
            "run",
            "-d",
            "--name",
            &name,
            BASE_IMAGE,
            "sh",
            "-c",
            &fetches(&url_c),
        ]);
        a.join().unwrap();
        b.join().unwrap();
    });

    let fa = build_record(&sensor, "build_finished", &tag_a, WAIT);
    let fb = build_record(&sensor, "build_finished", &tag_b, WAIT);
    assert_fields(&fa, &[("builder", eq(builder_name(builder_a)))]);
    assert_fields(&fb, &[("builder", eq(builder_name(builder_b)))]);
    assert_ne!(fa["build_id"], fb["build_id"]);
    // The builds really overlapped in time.
    let ts = |r: &Value, k: &str| r[k].as_str().unwrap().to_string();
    // (RFC 3339 with nanoseconds, always the same width: compared as strings; `ts` is the end.)
    assert!(
        ts(&fa, "started") < ts(&fb, "ts") && ts(&fb, "started") < ts(&fa, "ts"),
        "{fa}\n{fb}"
    );
    for (f, own, others) in [
        (&fa, &ips[0], [&ips[1], &ips[2]]),
        (&fb, &ips[1], [&ips[0], &ips[2]]),
    ] {
        let out = f["outbound"].as_array().unwrap();
        let mine: Vec<&Value> = out
            .iter()
            .filter(|o| o["dst_addr"] == own.as_str())
            .collect();
        assert!(!mine.is_empty(), "no outbound to its own host {own}: {f}");
        for o in &mine {
            assert_eq!(o["made_by"], "1", "{o} in {f}");
            assert_eq!(o["dst_port"], 8091, "{o}");
        }
        for other in others {
            assert!(
                !out.iter().any(|o| o["dst_addr"] == other.as_str()),
                "outbound to {other} in {f}"
            );
        }
    }
    // The container did reach its host while the builds ran, and the sensor saw it (else the
    // negative above would prove nothing).
    let start = sensor.expect_record("container_start", &[("name", eq(name.as_str()))], WAIT);
    assert_fields(&start, &[("build_id", absent())]);
    let to_c = sensor.expect_record(
        "connect",
        &[("dst_addr", eq(ips[2].as_str())), ("dst_port", eq(8091))],
        WAIT,
    );
    let during = |f: &Value| ts(&to_c, "ts") > ts(f, "started") && ts(&to_c, "ts") < ts(f, "ts");
    assert!(
        during(&fa) || during(&fb),
        "the container's first connect {to_c} is outside both builds"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while sc.docker_out(&["inspect", "--format", "{{.State.Running}}", &name]) != "false"
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(200));
    }
    let code = sc.docker_out(&["inspect", "--format", "{{.State.ExitCode}}", &name]);
    assert_eq!(code, "0", "the container's wget to {} failed", ips[2]);
    assert_records_match_schema(&sensor.records());
}
