//! Build sessions, live: real builds on the real dockerd (and builder tools where installed),
//! asserting the `build_started` / `build_finished` records the sensor writes.
//!
//! Run as root after `cargo build --release -p sensor`:
//! `cargo test -p sensor-tests --test builds -- --test-threads=1`.

use std::thread;
use std::time::Duration;

use sensor_tests::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

fn start_sensor(sc: &Scenario) -> SensorProcess {
    sc.start_sensor(&[
        "--stats-interval",
        "0",
        "--kinds",
        "sensor_started,build_started,build_finished,sensor_stats",
    ])
}

fn finished(sensor: &SensorProcess, tag: &str) -> Value {
    build_record(sensor, "build_finished", tag, WAIT)
}

fn started(sensor: &SensorProcess, tag: &str) -> Value {
    build_record(sensor, "build_started", tag, WAIT)
}

/// The scenario and a test host serving a payload on port 8090.
fn setup() -> (Scenario, std::sync::Arc<TestHost>) {
    let sc = Scenario::new("running the sensor, dockerd and a test host");
    let host = sc.host("builds");
    host.serve_http(8090, &[("payload", b"payload-for-the-build\n")]);
    (sc, host)
}

fn docker_build_is_reconstructed(builder: Builder, name: &str) {
    let (sc, host) = setup();
    let mut sensor = start_sensor(&sc);
    let url = host.url(8090, "payload");
    let text = format!(
        "FROM {BASE_IMAGE}
RUN wget -q -O /x {url}
RUN echo second > /y
"
    );
    let ctx = BuildContext::new(&text);
    let tag = sc.tag(name);
    ctx.build(&tag, builder);
    let s = started(&sensor, &tag);
    let f = finished(&sensor, &tag);
    eprintln!("{f}");
    // build_started waited for the Dockerfile dockerd wrote, and keeps the request's time.
    assert_eq!(s["dockerfile_status"], "captured", "{s}");
    assert_eq!(s["dockerfile"]["text"], text.as_str(), "{s}");
    assert_eq!(s["started"], f["started"], "{s}");
    let expect_builder = if builder == Builder::BuildKit {
        "buildkit"
    } else {
        "legacy"
    };
    assert_eq!(s["build_id"], f["build_id"]);
    assert_fields(
        &f,
        &[
            ("builder", eq(expect_builder)),
            ("status", eq("succeeded")),
            ("partial", eq(false)),
            ("client.transport", eq("unix")),
            ("client.exe", eq("/usr/bin/docker")),
            (
                "client.pid",
                satisfies("a pid > 0", |p| p.as_u64().is_some_and(|p| p > 0)),
            ),
            ("user_agent", starts_with("Docker-Client/")),
            ("tags", contains(tag.as_str())),
            ("image_id", eq(sc.image_id(&tag))),
        ],
    );
    assert_eq!(
        build_steps(&f),
        [
            (format!("/bin/sh -c wget -q -O /x {url}"), Some(0)),
            ("/bin/sh -c echo second > /y".to_string(), Some(0))
        ]
    );
    assert!(
        has_outbound(&f, &host.ip().to_string(), 8090, "1"),
        "outbound to the test host by step 1 expected: {f}"
    );
    assert!(
        f["base_images"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["reference"].as_str().unwrap().ends_with(BASE_IMAGE))
    );
    sensor.stop().unwrap();
}

#[test]
fn buildkit_docker_build_is_reconstructed() {
    docker_build_is_reconstructed(Builder::BuildKit, "builds-bk");
}

#[test]
fn legacy_docker_build_is_reconstructed() {
    docker_build_is_reconstructed(Builder::Legacy, "builds-legacy");
}

/// `POST /v1.41/build` with a tar body, sent with curl over the unix socket.
#[test]
fn curl_post_build_over_the_unix_socket() {
    let (sc, _host) = setup();
    let mut sensor = start_sensor(&sc);
    let tag = sc.tag("builds-curl");
    let body = curl_build(
        &format!("FROM {BASE_IMAGE}\nARG TOKEN\nRUN echo built-by-curl\n"),
        &format!("t={tag}&nocache=1&buildargs=%7B%22TOKEN%22%3A%22s3cr3t-value%22%7D"),
    );
    assert!(body.contains("Successfully built"), "{body}");
    let f = finished(&sensor, &tag);
    assert_fields(
        &f,
        &[
            ("builder", eq("legacy")),
            ("status", eq("succeeded")),
            ("client.exe", eq("/usr/bin/curl")),
            ("user_agent", starts_with("curl/")),
            ("params.build_args.TOKEN", eq("<redacted>")),
            ("params.context_upload", eq(true)),
            ("image_id", eq(sc.image_id(&tag))),
        ],
    );
    assert!(!f.to_string().contains("s3cr3t-value"));
    assert_eq!(
        build_steps(&f),
        [("/bin/sh -c echo built-by-curl".to_string(), Some(0))]
    );
    sensor.stop().unwrap();
}

#[test]
fn failed_builds_name_the_failing_step() {
    let (sc, _host) = setup();
    let mut sensor = start_sensor(&sc);
    for builder in [Builder::Legacy, Builder::BuildKit] {
        let ctx = BuildContext::new(&format!("FROM {BASE_IMAGE}\nRUN echo before\nRUN exit 3\n"));
        let tag = sc.tag(&format!("builds-fail-{builder:?}"));
        let out = Cmd::new(docker_cli())
            .env("DOCKER_BUILDKIT", builder.env_value())
            .args(["build", "--no-cache", "-t", &tag])
            .arg(ctx.path())
            .timeout(Duration::from_secs(300))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let f = finished(&sensor, &tag);
        eprintln!("{f}");
        assert_fields(
            &f,
            &[
                ("status", eq("failed")),
                ("failed_step", eq(2)),
                ("steps.1.command", eq("/bin/sh -c exit 3")),
                ("steps.1.exit_code", eq(3)),
                ("error", contains("exit 3")),
                ("image_id", absent()),
            ],
        );
    }
    // A Dockerfile that does not parse, and a missing base image (its registry is a closed port on
    // loopback, so nothing leaves the host): failed, no step.
    for (i, dockerfile) in [
        "FROM localbase:1\nNOTANINSTRUCTION x\n",
        "FROM 127.0.0.1:9/no-such-base:0\nRUN true\n",
    ]
    .iter()
    .enumerate()
    {
        let tag = sc.tag(&format!("builds-bad-{i}"));
        curl_build(dockerfile, &format!("t={tag}"));
        let f = finished(&sensor, &tag);
        assert_fields(
            &f,
            &[
                ("status", eq("failed")),
                (
                    "error",
                    satisfies("an error text", |e| {
                        e.as_str().is_some_and(|e| !e.is_empty())
                    }),
                ),
            ],
        );
    }
    sensor.stop().unwrap();
}

#[test]
fn overlapping_builds_are_never_mixed_up() {
    let (sc, _host) = setup();
    let mut sensor = start_sensor(&sc);
    for builder in [Builder::Legacy, Builder::BuildKit] {
        let tags: Vec<String> = (0..2)
            .map(|i| sc.tag(&format!("builds-overlap-{builder:?}-{i}")))
            .collect();
        let handles: Vec<_> = tags
            .iter()
            .enumerate()
            .map(|(i, tag)| {
                let tag = tag.clone();
                thread::spawn(move || {
                    let ctx = BuildContext::new(&format!(
                        "FROM {BASE_IMAGE}\nRUN sleep 2 && echo first-{i}\nRUN sleep 1 && echo second-{i}\n"
                    ));
                    ctx.build(&tag, builder);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        for (i, tag) in tags.iter().enumerate() {
            let f = finished(&sensor, tag);
            eprintln!("{f}");
            assert_fields(&f, &[("status", eq("succeeded"))]);
            assert_eq!(
                build_steps(&f),
                [
                    (format!("/bin/sh -c sleep 2 && echo first-{i}"), Some(0)),
                    (format!("/bin/sh -c sleep 1 && echo second-{i}"), Some(0)),
                ],
                "{builder:?} build {i} got another build's steps"
            );
            assert_fields(&f, &[("image_id", eq(sc.image_id(tag)))]);
            remove_image(tag);
        }
    }
    sensor.stop().unwrap();
    let stats = sensor.records_of_kind("sensor_stats");
    let last = stats.last().expect("final sensor_stats");
    assert_eq!(last["drops"]["steps_unattributed"], 0, "{last}");
}
