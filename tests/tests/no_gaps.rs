//! No gaps, live: a build's record and its lineage are on disk by the time its client returns,
//! so a sensor SIGKILLed right then still links, after its restart, a `docker run` of that
//! image to its build; and an image built while the sensor was stopped is reported when it
//! starts again (`image_discovered`), and a container started from it raises a finding.
//!
//! Run as root after `cargo build --release -p sensor`:
//! `cargo test -p sensor-tests --test no_gaps -- --test-threads=1`.

use std::time::{Duration, Instant};

use sensor_tests::*;

const BASE: &str = BASE_IMAGE;
const WAIT: Duration = Duration::from_secs(60);

fn sensor(sc: &Scenario) -> SensorProcess {
    sc.start_stateful_sensor(
        "sensor_started,build_finished,container_start,image_discovered,finding,sensor_stats",
    )
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

fn start_of(s: &SensorProcess, image: &str) -> serde_json::Value {
    s.expect_record("container_start", &[("image", eq(image))], WAIT)
}

#[test]
fn sigkill_right_after_a_build_keeps_its_lineage() {
    let sc = Scenario::new("running the sensor and dockerd");
    for builder in [Builder::Legacy, Builder::BuildKit] {
        let mut first = sensor(&sc);
        let tag = sc.tag(&format!("nogaps-kill-{builder:?}"));
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
        build_record(&first, "build_finished", &tag, WAIT);
        sigkill(&first);
        let killed_after = returned.elapsed();
        let status = first.stop().unwrap();
        assert!(!status.success(), "the sensor was not killed: {status}");
        eprintln!("{builder:?}: SIGKILL {killed_after:?} after the build returned");

        let mut second = sensor(&sc);
        run_container(&tag);
        let start = start_of(&second, &tag);
        eprintln!("{start}");
        // build_id: else the restarted sensor does not know the build of the image.
        assert_fields(
            &start,
            &[
                ("image_id", eq(sc.image_id(&tag))),
                ("build_id", starts_with("b-")),
            ],
        );
        second.stop().unwrap();
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

#[test]
fn build_while_the_sensor_is_stopped_is_discovered() {
    let sc = Scenario::new("running the sensor and dockerd");
    // A first run sees one build, then stops (its stop is the last time it watched).
    let mut first = sensor(&sc);
    let seen = sc.tag("nogaps-seen");
    build_quiet(
        Builder::Legacy,
        &seen,
        &format!("FROM {BASE}\nRUN echo seen > /m\n"),
    );
    build_record(&first, "build_finished", &seen, WAIT);
    assert!(first.stop().unwrap().success());

    // Built while nothing watched.
    let unseen = sc.tag("nogaps-unseen");
    build_quiet(
        Builder::Legacy,
        &unseen,
        &format!("FROM {BASE}\nRUN echo {unseen} > /m\n"),
    );
    let unseen_id = sc.image_id(&unseen);

    let mut second = sensor(&sc);
    let d = second.expect_record(
        "image_discovered",
        &[("image_id", eq(unseen_id.as_str()))],
        WAIT,
    );
    eprintln!("{d}");
    assert_fields(
        &d,
        &[
            ("runtime", eq("docker")),
            ("tags", contains(unseen.as_str())),
            (
                "history",
                contains(format!("/bin/sh -c echo {unseen} > /m")),
            ),
            ("repo_digests", eq(serde_json::json!([]))),
        ],
    );
    assert!(d["created"].as_str() > d["seen_until"].as_str(), "{d}");
    // The image the first run saw built is not reported again.
    let seen_id = sc.image_id(&seen);
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
    assert_fields(
        &start,
        &[("image_origin", eq("unexplained")), ("build_id", absent())],
    );
    let f = second.expect_record(
        "finding",
        &[
            ("rule", eq("container_from_unexplained_image")),
            ("container_id", eq(start["container_id"].clone())),
        ],
        WAIT,
    );
    eprintln!("{f}");
    // One built while watched: explained by its build.
    run_container(&seen);
    let s2 = start_of(&second, &seen);
    assert_fields(&s2, &[("image_origin", eq("built_here"))]);
    second.stop().unwrap();
    assert_records_match_schema(&second.records());
}

/// The same for buildah, on containers-storage: an image built while the sensor was stopped is
/// discovered at the next start; one it saw built (its lineage resolved by tag in the store) is
/// not.
#[test]
fn buildah_build_while_the_sensor_is_stopped_is_discovered() {
    let sc = Scenario::new("running the sensor and dockerd");
    let from = storage_base(BASE);
    let bud = |tag: &str, marker: &str| -> String {
        let ctx = BuildContext::new(&format!("FROM {from}\nRUN echo {marker} > /m\n"));
        storage_build("buildah", ctx.path(), tag, &["-q"])
    };

    let mut first = sensor(&sc);
    let seen = unique_tag("nogaps-bseen");
    sc.storage_image("buildah", &seen);
    let seen_id = bud(&seen, "seen");
    build_record(&first, "build_finished", &seen, WAIT);
    assert!(first.stop().unwrap().success());

    let unseen = unique_tag("nogaps-bunseen");
    sc.storage_image("buildah", &unseen);
    let unseen_id = bud(&unseen, &unseen);

    let mut second = sensor(&sc);
    let d = second.expect_record(
        "image_discovered",
        &[("image_id", eq(unseen_id.as_str()))],
        WAIT,
    );
    assert_fields(
        &d,
        &[
            ("runtime", eq("containers-storage")),
            (
                "tags",
                satisfies(&format!("a tag ending in {unseen}"), {
                    let unseen = unseen.clone();
                    move |t| {
                        t.as_array().is_some_and(|t| {
                            t.iter()
                                .any(|t| t.as_str().is_some_and(|t| t.ends_with(unseen.as_str())))
                        })
                    }
                }),
            ),
        ],
    );
    second.expect_no_record(
        "image_discovered",
        &[("image_id", eq(seen_id.as_str()))],
        Duration::from_secs(3),
    );
    assert!(second.stop().unwrap().success());
}
