//! Build sessions, live: real builds on the real dockerd (and builder tools where installed),
//! asserting the `build_started` / `build_finished` records the sensor writes.
//!
//! Run as root after `cargo build --release -p sensor`:
//! `cargo test -p sensor-tests --test builds -- --test-threads=1`.

use std::thread;
use std::time::Duration;

use sensor_tests::{
    BuildContext, Builder, Cmd, Dockerd, SensorProcess, TestHost, curl_build, docker_cli,
    ensure_base_image, remove_image, require_root, run, unique_tag,
};
use serde_json::Value;

const BASE: &str = "localbase:1";
const WAIT: Duration = Duration::from_secs(90);

fn start_sensor() -> SensorProcess {
    SensorProcess::start(&[
        "--stats-interval",
        "0",
        "--kinds",
        "sensor_started,build_started,build_finished,sensor_stats",
    ])
    .expect("sensor start")
}

fn has_tag(r: &Value, tag: &str) -> bool {
    r["params"]["tags"]
        .as_array()
        .is_some_and(|a| a.iter().any(|t| t == tag))
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

fn image_id(tag: &str) -> String {
    let out = run(
        docker_cli(),
        &["image", "inspect", "--format", "{{.Id}}", tag],
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn steps(f: &Value) -> Vec<(String, Option<i64>)> {
    f["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["command"].as_str().unwrap().to_string(),
                s["exit_code"].as_i64(),
            )
        })
        .collect()
}

fn setup() -> TestHost {
    require_root("running the sensor, dockerd and a test host");
    Dockerd::ensure();
    ensure_base_image(BASE);
    let host = TestHost::new("builds");
    host.serve_http(8090, &[("payload", b"payload-for-the-build\n")]);
    host
}

fn docker_build_is_reconstructed(builder: Builder, name: &str) {
    let host = setup();
    let mut sensor = start_sensor();
    let url = host.url(8090, "payload");
    let text = format!("FROM {BASE}\nRUN wget -q -O /x {url}\nRUN echo second > /y\n");
    let ctx = BuildContext::new(&text);
    let tag = unique_tag(name);
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
    assert_eq!(f["builder"], expect_builder);
    assert_eq!(f["status"], "succeeded");
    assert_eq!(f["partial"], false);
    assert_eq!(f["client"]["transport"], "unix");
    assert_eq!(f["client"]["exe"], "/usr/bin/docker");
    assert!(f["client"]["pid"].as_u64().is_some_and(|p| p > 0), "{f}");
    assert!(
        f["user_agent"]
            .as_str()
            .is_some_and(|u| u.starts_with("Docker-Client/")),
        "{f}"
    );
    assert!(
        f["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == tag.as_str()),
        "{f}"
    );
    assert_eq!(f["image_id"].as_str().unwrap(), image_id(&tag));
    assert_eq!(
        steps(&f),
        [
            (format!("/bin/sh -c wget -q -O /x {url}"), Some(0)),
            ("/bin/sh -c echo second > /y".to_string(), Some(0))
        ]
    );
    let ip = host.ip().to_string();
    let out = f["outbound"].as_array().unwrap();
    assert!(
        out.iter()
            .any(|o| o["dst_addr"] == ip.as_str() && o["dst_port"] == 8090 && o["made_by"] == "1"),
        "outbound to the test host by step 1 expected: {f}"
    );
    assert!(
        f["base_images"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["reference"].as_str().unwrap().ends_with(BASE))
    );
    sensor.stop().unwrap();
    remove_image(&tag);
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
    let _host = setup();
    let mut sensor = start_sensor();
    let tag = unique_tag("builds-curl");
    let body = curl_build(
        &format!("FROM {BASE}\nARG TOKEN\nRUN echo built-by-curl\n"),
        &format!("t={tag}&nocache=1&buildargs=%7B%22TOKEN%22%3A%22s3cr3t-value%22%7D"),
    );
    assert!(body.contains("Successfully built"), "{body}");
    let f = finished(&sensor, &tag);
    assert_eq!(f["builder"], "legacy");
    assert_eq!(f["status"], "succeeded");
    assert_eq!(f["client"]["exe"], "/usr/bin/curl");
    assert!(
        f["user_agent"]
            .as_str()
            .is_some_and(|u| u.starts_with("curl/")),
        "{f}"
    );
    assert_eq!(f["params"]["build_args"]["TOKEN"], "<redacted>");
    assert_eq!(f["params"]["context_upload"], true);
    assert!(!f.to_string().contains("s3cr3t-value"));
    assert_eq!(f["image_id"].as_str().unwrap(), image_id(&tag));
    assert_eq!(
        steps(&f),
        [("/bin/sh -c echo built-by-curl".to_string(), Some(0))]
    );
    sensor.stop().unwrap();
    remove_image(&tag);
}

#[test]
fn failed_builds_name_the_failing_step() {
    let _host = setup();
    let mut sensor = start_sensor();
    for builder in [Builder::Legacy, Builder::BuildKit] {
        let ctx = BuildContext::new(&format!("FROM {BASE}\nRUN echo before\nRUN exit 3\n"));
        let tag = unique_tag(&format!("builds-fail-{builder:?}"));
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
        assert_eq!(f["status"], "failed", "{f}");
        assert_eq!(f["failed_step"], 2, "{f}");
        assert_eq!(steps(&f)[1], ("/bin/sh -c exit 3".to_string(), Some(3)));
        assert!(f["error"].as_str().unwrap().contains("exit 3"), "{f}");
        assert!(f.get("image_id").is_none_or(Value::is_null));
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
        let tag = unique_tag(&format!("builds-bad-{i}"));
        curl_build(dockerfile, &format!("t={tag}"));
        let f = finished(&sensor, &tag);
        assert_eq!(f["status"], "failed", "{f}");
        assert!(f["error"].as_str().is_some_and(|e| !e.is_empty()), "{f}");
    }
    sensor.stop().unwrap();
}

#[test]
fn overlapping_builds_are_never_mixed_up() {
    let _host = setup();
    let mut sensor = start_sensor();
    for builder in [Builder::Legacy, Builder::BuildKit] {
        let tags: Vec<String> = (0..2)
            .map(|i| unique_tag(&format!("builds-overlap-{builder:?}-{i}")))
            .collect();
        let handles: Vec<_> = tags
            .iter()
            .enumerate()
            .map(|(i, tag)| {
                let tag = tag.clone();
                thread::spawn(move || {
                    let ctx = BuildContext::new(&format!(
                        "FROM {BASE}\nRUN sleep 2 && echo first-{i}\nRUN sleep 1 && echo second-{i}\n"
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
            assert_eq!(f["status"], "succeeded", "{f}");
            assert_eq!(
                steps(&f),
                [
                    (format!("/bin/sh -c sleep 2 && echo first-{i}"), Some(0)),
                    (format!("/bin/sh -c sleep 1 && echo second-{i}"), Some(0)),
                ],
                "{builder:?} build {i} got another build's steps"
            );
            assert_eq!(f["image_id"].as_str().unwrap(), image_id(tag));
            remove_image(tag);
        }
    }
    sensor.stop().unwrap();
    let stats = sensor.records_of_kind("sensor_stats");
    let last = stats.last().expect("final sensor_stats");
    assert_eq!(last["drops"]["steps_unattributed"], 0, "{last}");
}
