//! No gaps, live: a build's record and its lineage are on disk by the time its client returns,
//! so a sensor SIGKILLed right then still links, after its restart, a `docker run` of that
//! image to its build; and an image built while the sensor was stopped is reported when it
//! starts again (`image_discovered`), and a container started from it raises a finding.
//!
//! Run as root after `cargo build --release -p sensor`:
//! `cargo test -p sensor-tests --test no_gaps -- --test-threads=1`.

use std::time::{Duration, Instant};

use sensor_tests::{
    BuildContext, Builder, Cmd, Dockerd, SensorProcess, docker_build_quiet, docker_cli,
    ensure_base_image, remove_image, require_root, storage_base, storage_build, unique_tag,
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
        "sensor_started,build_finished,container_start,image_discovered,finding,sensor_stats",
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
    let state = setup();
    let state_dir = state.path().join("state");
    let state_dir = state_dir.to_str().unwrap();
    for builder in [Builder::Legacy, Builder::BuildKit] {
        let mut first = sensor(state_dir);
        let tag = unique_tag(&format!("nogaps-kill-{builder:?}"));
        build_quiet(
            builder,
            &tag,
            &format!("FROM {BASE}\nRUN echo {tag} > /marker\n"),
        );
        // Killed the moment its build_finished is out: the lineage must already be on disk
        // (persisted with the record, not at a later save). Not at the client's return: the
        // sensor cannot persist what it has not yet read from the ring buffer (it reads in
        // batches a few milliseconds apart), and a kill in that window raced the reader.
        let returned = Instant::now();
        first
            .wait_for(
                |r| r["kind"] == "build_finished" && sensor_tests::has_tag(r, &tag),
                WAIT,
            )
            .unwrap_or_else(|e| panic!("no build_finished for {tag}: {e:#}"));
        sigkill(&first);
        let killed_after = returned.elapsed();
        let status = first.stop().unwrap();
        assert!(!status.success(), "the sensor was not killed: {status}");
        eprintln!("{builder:?}: SIGKILL {killed_after:?} after the build returned");

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

/// `docker build -q --no-cache -t TAG` of a context with `dockerfile`; fails the test when
/// the build does.
fn build_quiet(builder: Builder, tag: &str, dockerfile: &str) {
    let ctx = BuildContext::new(dockerfile);
    let out = docker_build_quiet(ctx.path(), tag, builder);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Root, the engine and the base image, and a state directory for the runs of one test.
fn setup() -> tempfile::TempDir {
    require_root("running the sensor and dockerd");
    Dockerd::ensure();
    ensure_base_image(BASE);
    tempfile::tempdir().unwrap()
}

#[test]
fn build_while_the_sensor_is_stopped_is_discovered() {
    let state = setup();
    let state_dir = state.path().join("state");
    let state_dir = state_dir.to_str().unwrap();

    // A first run sees one build, then stops (its stop is the last time it watched).
    let mut first = sensor(state_dir);
    let seen = unique_tag("nogaps-seen");
    build_quiet(
        Builder::Legacy,
        &seen,
        &format!("FROM {BASE}\nRUN echo seen > /m\n"),
    );
    first
        .wait_for(
            |r| r["kind"] == "build_finished" && sensor_tests::has_tag(r, &seen),
            WAIT,
        )
        .unwrap();
    assert!(first.stop().unwrap().success());

    // Built while nothing watched.
    let unseen = unique_tag("nogaps-unseen");
    build_quiet(
        Builder::Legacy,
        &unseen,
        &format!("FROM {BASE}\nRUN echo {unseen} > /m\n"),
    );
    let unseen_id = image_id(&unseen);

    let mut second = sensor(state_dir);
    let d = second
        .wait_for(
            |r| r["kind"] == "image_discovered" && r["image_id"] == unseen_id.as_str(),
            WAIT,
        )
        .unwrap_or_else(|e| panic!("no image_discovered for {unseen}: {e:#}"));
    eprintln!("{d}");
    assert_eq!(d["runtime"], "docker", "{d}");
    assert!(
        d["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == unseen.as_str()),
        "{d}"
    );
    assert!(
        d["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h == format!("/bin/sh -c echo {unseen} > /m").as_str()),
        "{d}"
    );
    assert!(d["repo_digests"].as_array().unwrap().is_empty(), "{d}");
    assert!(d["created"].as_str() > d["seen_until"].as_str(), "{d}");
    // The image the first run saw built is not reported again.
    let seen_id = image_id(&seen);
    assert!(
        !second
            .records_of_kind("image_discovered")
            .iter()
            .any(|r| r["image_id"] == seen_id.as_str()),
        "an image built while the sensor watched was reported as discovered"
    );

    // Starting a container from it: no build explains the image.
    run_container(&unseen);
    let start = start_of(&second, &unseen);
    assert_eq!(start["image_origin"], "unexplained", "{start}");
    assert!(start.get("build_id").is_none_or(Value::is_null), "{start}");
    let f = second
        .wait_for(
            |r| {
                r["kind"] == "finding"
                    && r["rule"] == "container_from_unexplained_image"
                    && r["container_id"] == start["container_id"]
            },
            WAIT,
        )
        .unwrap_or_else(|e| panic!("no container_from_unexplained_image: {e:#}"));
    eprintln!("{f}");
    // One built while watched: explained by its build.
    run_container(&seen);
    let s2 = start_of(&second, &seen);
    assert_eq!(s2["image_origin"], "built_here", "{s2}");
    second.stop().unwrap();
    sensor_tests::assert_records_match_schema(&second.records());
    remove_image(&seen);
    remove_image(&unseen);
}

/// The same for buildah, on containers-storage: an image built while the sensor was stopped is
/// discovered at the next start; one it saw built (its lineage resolved by tag in the store) is
/// not.
#[test]
fn buildah_build_while_the_sensor_is_stopped_is_discovered() {
    let state = setup();
    let state_dir = state.path().join("state");
    let state_dir = state_dir.to_str().unwrap();
    let from = storage_base(BASE);
    let bud = |tag: &str, marker: &str| -> String {
        let ctx = BuildContext::new(&format!("FROM {from}\nRUN echo {marker} > /m\n"));
        storage_build("buildah", ctx.path(), tag, &["-q"])
    };
    let mut rmi = BuildahImages(Vec::new());

    let mut first = sensor(state_dir);
    let seen = unique_tag("nogaps-bseen");
    let seen_id = bud(&seen, "seen");
    rmi.0.push(seen.clone());
    first
        .wait_for(
            |r| r["kind"] == "build_finished" && sensor_tests::has_tag(r, &seen),
            WAIT,
        )
        .unwrap();
    assert!(first.stop().unwrap().success());

    let unseen = unique_tag("nogaps-bunseen");
    let unseen_id = bud(&unseen, &unseen);
    rmi.0.push(unseen.clone());

    let mut second = sensor(state_dir);
    let d = second
        .wait_for(
            |r| r["kind"] == "image_discovered" && r["image_id"] == unseen_id.as_str(),
            WAIT,
        )
        .unwrap_or_else(|e| panic!("no image_discovered for {unseen}: {e:#}"));
    assert_eq!(d["runtime"], "containers-storage", "{d}");
    assert!(
        d["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t.as_str().is_some_and(|t| t.ends_with(unseen.as_str()))),
        "{d}"
    );
    second
        .expect_none(
            |r| r["kind"] == "image_discovered" && r["image_id"] == seen_id.as_str(),
            Duration::from_secs(3),
        )
        .unwrap();
    assert!(second.stop().unwrap().success());
}

/// Removes buildah images at the end of the test, passed or not.
struct BuildahImages(Vec<String>);

impl Drop for BuildahImages {
    fn drop(&mut self) {
        for t in &self.0 {
            let _ = Cmd::new("buildah").args(["rmi", t]).try_run();
        }
    }
}
