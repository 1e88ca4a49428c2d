//! The Dockerfile of a build, as the daemon received it: comments, ENV, LABEL and ARG lines
//! included (the progress stream shows none of them), ARG defaults redacted, its digest, its
//! instructions, and the policy's patterns over them (`build_suspicious_instruction`).
use std::thread;
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
    // build_started waited for it (at most 500 ms after the request) and carries it too.
    let started = build_record(sensor, "build_started", tag, WAIT);
    assert_eq!(started["build_id"], build_id, "{started}");
    assert_eq!(started["dockerfile_status"], "captured", "{started}");
    assert_eq!(started["dockerfile"]["source"], "daemon_write", "{started}");
    assert_eq!(started["dockerfile"]["sha256"], d["sha256"], "{started}");
    assert_eq!(started["dockerfile"]["text"], d["text"], "{started}");
    assert_eq!(started["started"], finished["started"], "{started}");
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

/// A context at a URL (`http://<test host>/ctx.tar`), legacy and BuildKit: the legacy docker
/// CLI fetches such a tarball itself and uploads it (`context_upload`); the BuildKit CLI and a
/// raw `POST /build?remote=URL` have the daemon fetch it. The legacy builder unpacks the
/// Dockerfile to disk; BuildKit writes the downloaded tarball to a snapshot (a file named
/// `context`) and the Dockerfile is taken from it (`source: remote_context`), also when the
/// unpack is cached and nothing writes the Dockerfile itself: the raw BuildKit request below
/// fetches the same bytes the BuildKit CLI's build unpacked a moment before.
#[test]
fn the_dockerfile_of_a_remote_context_is_recorded() {
    require_root("loading eBPF programs");
    Dockerd::ensure();
    ensure_base_image("localbase:1");
    let text = "FROM localbase:1\nARG TOKEN=s3cret\n# remote context\nLABEL from=url\nRUN echo remote > /r\n";
    // A name of its own: other builds on this shared dockerd use `Dockerfile`, and a file is
    // given to the one waiting build whose `dockerfile` parameter names it.
    let name = format!("remote-{}.Dockerfile", std::process::id());
    let ctx = BuildContext::new("").file(&name, text.as_bytes());
    let tar = Cmd::new("tar")
        .args(["-C", ctx.path().to_str().unwrap(), "-cf", "-", &name])
        .run()
        .stdout;
    let peer = TestHost::new("dfremote");
    peer.serve_http(8080, &[("ctx.tar", &tar)]);
    let cli_url = peer.url(8080, "ctx.tar");
    // The raw BuildKit request fetches the same bytes from a server of its own, started after
    // the builds before it (seconds later): BuildKit 0.8 (dockerd 20.10) sends every ETag it
    // has stored for a downloaded `context` in `If-None-Match`, and busybox httpd (ETag: mtime
    // and size) answers a match with a 304 without an ETag, which BuildKit refuses ("invalid
    // not-modified ETag"). A file written later has another ETag.
    let raw_url = peer.url(8081, "ctx.tar");
    let mut sensor = SensorProcess::start(&["--kinds", "sensor,builds"]).unwrap();
    let mut tags = Vec::new();
    for (builder, by_daemon) in [
        (Builder::Legacy, false),
        (Builder::BuildKit, false),
        (Builder::Legacy, true),
        (Builder::BuildKit, true),
    ] {
        let tag = unique_tag("dockerfile-remote");
        let url = if by_daemon && builder == Builder::BuildKit {
            &raw_url
        } else {
            &cli_url
        };
        if by_daemon && builder == Builder::BuildKit {
            thread::sleep(Duration::from_millis(1100));
            peer.serve_http(8081, &[("ctx.tar", &tar)]);
        }
        if by_daemon {
            let version = if builder == Builder::BuildKit {
                "&version=2"
            } else {
                ""
            };
            let query = format!(
                "t={}&dockerfile={name}&remote={}{version}",
                tag.replace(':', "%3A"),
                url.replace(':', "%3A").replace('/', "%2F")
            );
            let out = Cmd::new("curl")
                .args(["-sS", "--unix-socket", "/var/run/docker.sock", "-X", "POST"])
                .arg(format!("http://localhost/v1.41/build?{query}"))
                .timeout(Duration::from_secs(300))
                .run();
            eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        } else {
            let out = Cmd::new(docker_cli())
                .env("DOCKER_BUILDKIT", builder.env_value())
                .args(["build", "--no-cache", "-f", &name, "-t", &tag, url])
                .timeout(Duration::from_secs(300))
                .run();
            assert!(out.status.success(), "{builder:?} build of {url} failed");
        }
        let what = format!("{builder:?}, fetched by the daemon: {by_daemon}");
        let finished = build_record(&sensor, "build_finished", &tag, WAIT);
        assert_eq!(finished["status"], "succeeded", "{what}: {finished}");
        if by_daemon {
            assert_eq!(
                finished["params"]["remote"],
                url.as_str(),
                "{what}: {finished}"
            );
        } else {
            assert_eq!(
                finished["params"]["context_upload"], true,
                "{what}: {finished}"
            );
        }
        let started = build_record(&sensor, "build_started", &tag, WAIT);
        eprintln!("{what}: {started}");
        let d = &finished["dockerfile"];
        assert_eq!(
            d["text"],
            text.replace("s3cret", "<redacted>").as_str(),
            "{what}: {finished}"
        );
        assert_eq!(d["sha256"].as_str().unwrap(), sha256_hex(text.as_bytes()));
        // BuildKit: from the downloaded tarball (written before any unpack).
        if builder == Builder::BuildKit {
            assert_eq!(d["source"], "remote_context", "{what}: {finished}");
            let path = d["path"].as_str().unwrap();
            assert!(
                path.ends_with(&format!("/context!/{name}")),
                "{what}: {finished}"
            );
        }
        assert_eq!(
            started["dockerfile_status"], "captured",
            "{what}: {started}"
        );
        assert_eq!(
            started["dockerfile"]["text"], d["text"],
            "{what}: {started}"
        );
        tags.push(tag);
    }
    assert_records_match_schema(&sensor.records());
    assert!(sensor.stop().unwrap().success());
    for t in &tags {
        remove_image(t);
    }
}
