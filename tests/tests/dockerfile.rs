//! The Dockerfile of a build, as the daemon received it: comments, ENV, LABEL and ARG lines
//! included (the progress stream shows none of them), ARG defaults redacted, its digest, its
//! instructions, and the policy's patterns over them (`build_suspicious_instruction`).
use std::time::Duration;

use sensor_tests::*;

const WAIT: Duration = Duration::from_secs(90);

fn sha256_hex(bytes: &[u8]) -> String {
    let out = Cmd::new("sha256sum").stdin(bytes.to_vec()).run();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn check(sensor: &SensorProcess, tag: &str, text: &str, ip: &str) {
    let finished = build_record(sensor, "build_finished", tag, WAIT);
    assert_fields(&finished, &[("status", eq("succeeded"))]);
    let build_id = finished["build_id"].as_str().unwrap();
    let d = sensor.expect_record("build_dockerfile", &[("build_id", eq(build_id))], WAIT);
    let got = d["text"].as_str().unwrap();
    assert!(got.contains("# fetch the tool"), "comments are kept: {d}");
    assert!(got.contains("LABEL team=payments"), "{d}");
    assert!(
        got.contains("ARG TOKEN=<redacted>"),
        "ARG defaults are redacted: {d}"
    );
    assert!(!got.contains("s3cret"), "{d}");
    assert_fields(
        &d,
        &[
            ("sha256", eq(sha256_hex(text.as_bytes()))),
            ("size", eq(text.len())),
            ("truncated", eq(false)),
        ],
    );
    // build_finished carries the same text and digest (it is written after the Dockerfile).
    let finished = build_record(sensor, "build_finished", tag, WAIT);
    assert_fields(
        &finished,
        &[
            ("dockerfile.sha256", eq(d["sha256"].clone())),
            ("dockerfile.text", eq(d["text"].clone())),
        ],
    );
    let kws: Vec<&str> = d["instructions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instruction"].as_str().unwrap())
        .collect();
    assert_eq!(kws, ["FROM", "ARG", "ENV", "LABEL", "RUN"], "{d}");
    let f = sensor.expect_record(
        "finding",
        &[
            ("rule", eq("build_suspicious_instruction")),
            ("build_id", eq(build_id)),
        ],
        WAIT,
    );
    assert_fields(
        &f,
        &[
            ("severity", eq("high")),
            ("attack.0", eq("T1612")),
            ("details.matches.0.pattern", eq("download_from_ip_address")),
            ("details.matches.0.line", eq(6)),
            ("details.matches.0.instruction", contains(ip)),
        ],
    );
}

#[test]
fn the_dockerfile_is_recorded_for_each_builder_and_client() {
    let sc = Scenario::new("loading eBPF programs");
    let peer = sc.host("dfile");
    peer.serve_http(8080, &[("tool", b"#!/bin/sh\necho tool\n")]);
    let ip = peer.ip().to_string();
    let mut sensor = sc.start_sensor(&[
        "--state-dir",
        &sc.state_dir(),
        "--kinds",
        "sensor,builds,findings",
    ]);
    let text = format!(
        "FROM {BASE_IMAGE}\nARG TOKEN=s3cret\nENV MODE=prod\nLABEL team=payments\n# fetch the tool\nRUN wget -q -O /tool {} \\\n && chmod +x /tool\n",
        peer.url(8080, "tool")
    );
    let ctx = BuildContext::new(&text);
    for builder in [Builder::BuildKit, Builder::Legacy] {
        let tag = sc.tag("dockerfile");
        let out = ctx.build(&tag, builder);
        assert!(out.status.success(), "{builder:?} build failed");
        check(&sensor, &tag, &text, &ip);
    }
    // A raw API upload with curl: the context tar in the request body.
    let tag = sc.tag("dockerfile-api");
    curl_build(&text, &format!("t={}", tag.replace(':', "%3A")));
    check(&sensor, &tag, &text, &ip);
    let records = sensor.records();
    assert_records_match_schema(&records);
    assert!(sensor.stop().unwrap().success());
}
