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

use sensor_tests::{
    BuildContext, Cmd, DOCKER_SOCKET, Dockerd, SensorProcess, assert_records_match_schema,
    docker_cli, ensure_base_image, has_tag, remove_image, require_root, unique_tag,
};
use serde_json::Value;

const BASE: &str = "localbase:1";
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

fn container_id(name: &str) -> String {
    let out = Cmd::new(docker_cli())
        .args(["inspect", "--format", "{{.Id}}", name])
        .run();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

struct RemoveContainer(String);

impl Drop for RemoveContainer {
    fn drop(&mut self) {
        let _ = Cmd::new(docker_cli())
            .args(["rm", "-f", &self.0])
            .timeout(Duration::from_secs(30))
            .output();
    }
}

fn finding(sensor: &SensorProcess, rule: &str, pred: impl Fn(&Value) -> bool) -> Value {
    sensor
        .wait_for(
            |r| r["kind"] == "finding" && r["rule"] == rule && pred(r),
            WAIT,
        )
        .unwrap_or_else(|e| panic!("no {rule} finding: {e:#}"))
}

#[test]
fn docker_client_in_a_container_builds_and_runs() {
    require_root("running the sensor and dockerd");
    Dockerd::ensure();
    ensure_base_image(BASE);
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

    let mut sensor = SensorProcess::start(&[
        "--stats-interval",
        "0",
        "--kinds",
        "sensor_started,build_started,build_finished,container_start,finding,sensor_stats",
    ])
    .expect("sensor start");
    let tag = unique_tag("from-container");
    let name = tag.replace([':', '.'], "-");
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
    let _cleanup = RemoveContainer(name.clone());
    let outer = container_id(&name);
    let out = Cmd::new(docker_cli())
        .args(["start", "-a", &name])
        .timeout(Duration::from_secs(300))
        .run();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("built-inside"),
        "the inner run did not print the marker: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    let f = sensor
        .wait_for(|r| r["kind"] == "build_finished" && has_tag(r, &tag), WAIT)
        .unwrap_or_else(|e| panic!("no build_finished for {tag}: {e:#}"));
    eprintln!("{f}");
    assert_eq!(f["status"], "succeeded", "{f}");
    assert_eq!(f["client"]["exe"], docker_cli(), "{f}");
    assert_eq!(f["client"]["container_id"], outer.as_str(), "{f}");
    assert_eq!(f["client"]["container_name"], name.as_str(), "{f}");
    assert_eq!(f["client"]["container_image"], BASE, "{f}");
    let build_id = f["build_id"].as_str().unwrap().to_string();

    let b = finding(&sensor, "build_from_container", |r| {
        r["build_id"] == build_id.as_str()
    });
    eprintln!("{b}");
    assert_eq!(b["severity"], "high", "{b}");
    assert_eq!(b["attack"], serde_json::json!(["T1612"]), "{b}");
    assert_eq!(b["analytics"], serde_json::json!(["AN1261"]), "{b}");
    assert_eq!(b["container_id"], outer.as_str(), "{b}");

    // The inner `docker run` of the image just built: its start names the client's container.
    let start = sensor
        .wait_for(
            |r| r["kind"] == "container_start" && r["image"] == tag.as_str(),
            WAIT,
        )
        .unwrap_or_else(|e| panic!("no container_start of {tag}: {e:#}"));
    eprintln!("{start}");
    assert_eq!(start["client"]["container_id"], outer.as_str(), "{start}");
    assert_eq!(start["build_id"], build_id.as_str(), "{start}");
    let s = finding(&sensor, "container_start_from_container", |r| {
        r["container_id"] == start["container_id"]
    });
    assert_eq!(s["attack"], serde_json::json!(["T1610"]), "{s}");

    // The outer container was started from the host: no finding names it as a client's.
    assert!(
        !sensor.records_of_kind("finding").iter().any(|r| {
            r["rule"] == "container_start_from_container" && r["container_id"] == outer.as_str()
        }),
        "the host's start of the outer container was taken for one from inside a container"
    );
    sensor.stop().unwrap();
    assert_records_match_schema(&sensor.records());
    remove_image(&tag);
}
