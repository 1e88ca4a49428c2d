//! A Docker client inside a container with the daemon's socket mounted (the usual path from a
//! compromised container to T1612/T1610), live: the client builds an image and starts a
//! container from it. The build's and the start's `client` name the container the client runs
//! in (id, name, image), and `build_from_container` and `container_start_from_container` fire.
//!
//! The base image is busybox only: the host's `/usr/bin/docker` (the 20.10 CLI, dynamically
//! linked) is bind-mounted into the container with the libraries `ldd` names for it.
//!
//! Run as root after `cargo build --release -p sensor`:
//! `cargo test -p sensor-tests --test client_in_container -- --test-threads=1`.

use std::time::Duration;

use sensor_tests::*;
use serde_json::json;

const BASE: &str = BASE_IMAGE;
const WAIT: Duration = Duration::from_secs(90);

/// `-v` arguments that make the host's docker CLI run inside a busybox container: the binary
/// and every library its `ldd` lists (absolute paths), read-only.
fn docker_cli_mounts() -> Vec<String> {
    let ldd = Cmd::new("ldd").arg(docker_cli()).run();
    let mut files = vec![docker_cli().to_string()];
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux... (0x...)`
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(str::to_string);
        if let Some(p) = path {
            files.push(p);
        }
    }
    files
        .into_iter()
        .flat_map(|f| ["-v".to_string(), format!("{f}:{f}:ro")])
        .collect()
}

#[test]
fn docker_client_in_a_container_builds_and_runs() {
    let sc = Scenario::new("running the sensor and dockerd");
    let mounts = docker_cli_mounts();

    // The CLI runs in a busybox container at all (else the test would prove nothing).
    let check = Cmd::new(docker_cli())
        .args(["run", "--rm"])
        .args(&mounts)
        .args(["-v", &format!("{DOCKER_SOCKET}:/var/run/docker.sock")])
        .args([
            BASE,
            docker_cli(),
            "version",
            "--format",
            "{{.Server.Version}}",
        ])
        .timeout(Duration::from_secs(60))
        .run();
    assert!(
        !String::from_utf8_lossy(&check.stdout).trim().is_empty(),
        "the docker CLI does not run inside the container"
    );

    let mut sensor = sc.start_sensor(&[
        "--stats-interval",
        "0",
        "--kinds",
        "sensor_started,build_started,build_finished,container_start,finding,sensor_stats",
    ]);
    let tag = sc.tag("from-container");
    let name = sc.container_name("from-container");
    let ctx = BuildContext::new(&format!("FROM {BASE}\nRUN echo built-inside > /marker\n"));
    let script = format!(
        "DOCKER_BUILDKIT=0 {cli} build -q -t {tag} /ctx && {cli} run --rm {tag} cat /marker",
        cli = docker_cli()
    );
    Cmd::new(docker_cli())
        .args(["create", "--name", &name])
        .args(&mounts)
        .args(["-v", &format!("{DOCKER_SOCKET}:/var/run/docker.sock")])
        .args(["-v", &format!("{}:/ctx:ro", ctx.path().display())])
        .args([BASE, "/bin/sh", "-c", &script])
        .run();
    let outer = sc.docker_out(&["inspect", "--format", "{{.Id}}", &name]);
    let out = Cmd::new(docker_cli())
        .args(["start", "-a", &name])
        .timeout(Duration::from_secs(300))
        .run();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("built-inside"),
        "the inner run did not print the marker: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    let f = build_record(&sensor, "build_finished", &tag, WAIT);
    eprintln!("{f}");
    assert_fields(
        &f,
        &[
            ("status", eq("succeeded")),
            ("client.exe", eq(docker_cli())),
            ("client.container_id", eq(outer.as_str())),
            ("client.container_name", eq(name.as_str())),
            ("client.container_image", eq(BASE)),
        ],
    );
    let build_id = f["build_id"].as_str().unwrap().to_string();

    let b = sensor.expect_record(
        "finding",
        &[
            ("rule", eq("build_from_container")),
            ("build_id", eq(build_id.as_str())),
        ],
        WAIT,
    );
    eprintln!("{b}");
    assert_fields(
        &b,
        &[
            ("severity", eq("high")),
            ("attack", eq(json!(["T1612"]))),
            ("analytics", eq(json!(["AN1261"]))),
            ("container_id", eq(outer.as_str())),
        ],
    );

    // The inner `docker run` of the image just built: its start names the client's container.
    let start = sensor.expect_record("container_start", &[("image", eq(tag.as_str()))], WAIT);
    eprintln!("{start}");
    assert_fields(
        &start,
        &[
            ("client.container_id", eq(outer.as_str())),
            ("build_id", eq(build_id.as_str())),
        ],
    );
    let s = sensor.expect_record(
        "finding",
        &[
            ("rule", eq("container_start_from_container")),
            ("container_id", eq(start["container_id"].clone())),
        ],
        WAIT,
    );
    assert_fields(&s, &[("attack", eq(json!(["T1610"])))]);

    // The outer container was started from the host: no finding names it as a client's.
    assert!(
        !sensor.records_of_kind("finding").iter().any(|r| {
            r["rule"] == "container_start_from_container" && r["container_id"] == outer.as_str()
        }),
        "the host's start of the outer container was taken for one from inside a container"
    );
    sensor.stop().unwrap();
    assert_records_match_schema(&sensor.records());
}
