//! No gaps, live: a build's record and its lineage are on disk by the time its client returns,
//! so a sensor SIGKILLed right then still links, after its restart, a `docker run` of that
//! image to its build.
//!
//! Run as root after `cargo build --release -p sensor`:
//! `cargo test -p sensor-tests --test no_gaps -- --test-threads=1`.

use std::time::{Duration, Instant};

use sensor_tests::{
    BuildContext, Cmd, Dockerd, SensorProcess, docker_cli, ensure_base_image, remove_image,
    require_root, unique_tag,
};
use serde_json::Value;

const BASE: &str = "localbase:1";
const WAIT: Duration = Duration::from_secs(60);

fn image_id(tag: &str) -> String {
    let out = Cmd::new(docker_cli())
        .args(["image", "inspect", "--format", "{{.Id}}", tag])
        .run();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn sensor(state_dir: &str) -> SensorProcess {
    SensorProcess::start(&[
        "--stats-interval",
        "0",
        "--state-dir",
        state_dir,
        "--kinds",
        "sensor_started,build_finished,container_start,finding,sensor_stats",
    ])
    .expect("sensor start")
}

fn sigkill(s: &SensorProcess) {
    // SAFETY: kill only sends a signal, to our own child that has not been reaped yet.
    unsafe { libc::kill(s.pid() as libc::pid_t, libc::SIGKILL) };
}

fn run_container(tag: &str) {
    Cmd::new(docker_cli())
        .args(["run", "--rm", tag, "true"])
        .timeout(Duration::from_secs(60))
        .run();
}

fn start_of(s: &SensorProcess, image: &str) -> Value {
    s.wait_for(
        |r| r["kind"] == "container_start" && r["image"] == image,
        WAIT,
    )
    .unwrap_or_else(|e| panic!("no container_start of {image}: {e:#}"))
}

#[test]
fn sigkill_right_after_a_build_keeps_its_lineage() {
    require_root("running the sensor and dockerd");
    Dockerd::ensure();
    ensure_base_image(BASE);
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("state");
    let state_dir = state_dir.to_str().unwrap();
    for builder in ["0", "1"] {
        let mut first = sensor(state_dir);
        let tag = unique_tag(&format!("nogaps-kill-{builder}"));
        let ctx = BuildContext::new(&format!("FROM {BASE}\nRUN echo {tag} > /marker\n"));
        Cmd::new(docker_cli())
            .env("DOCKER_BUILDKIT", builder)
            .args(["build", "-q", "--no-cache", "-t", &tag])
            .arg(ctx.path())
            .timeout(Duration::from_secs(300))
            .run();
        // Right as the client returns: no grace for the sensor to write anything more.
        let returned = Instant::now();
        sigkill(&first);
        let killed_after = returned.elapsed();
        let status = first.stop().unwrap();
        assert!(!status.success(), "the sensor was not killed: {status}");
        eprintln!("DOCKER_BUILDKIT={builder}: SIGKILL {killed_after:?} after the build returned");

        let mut second = sensor(state_dir);
        run_container(&tag);
        let start = start_of(&second, &tag);
        eprintln!("{start}");
        assert_eq!(start["image_id"].as_str(), Some(image_id(&tag).as_str()));
        assert!(
            start["build_id"]
                .as_str()
                .is_some_and(|b| b.starts_with("b-")),
            "the restarted sensor does not know the build of {tag}: {start}"
        );
        second.stop().unwrap();
        remove_image(&tag);
    }
}
