//! Quiet builds, live: `docker build -q` (legacy and BuildKit) and a raw `POST /build?q=1` over
//! the unix socket, each with a RUN step that downloads from a test host. A quiet build shows
//! its client no progress, only the image id at the end: the build record must still be whole
//! (image id, steps with exit codes, outbound, status), from what the daemon does.
//!
//! Run as root after `cargo build --release -p sensor`:
//! `cargo test -p sensor-tests --test builds_quiet -- --test-threads=1`.

use std::thread;
use std::time::{Duration, Instant};

use std::sync::Arc;

use sensor_tests::*;
use serde_json::Value;

const BASE: &str = BASE_IMAGE;
const WAIT: Duration = Duration::from_secs(90);
const PORT: u16 = 8093;

/// The scenario, a test host serving the payload, and the sensor.
fn setup() -> (Scenario, Arc<TestHost>, SensorProcess) {
    let sc = Scenario::new("running the sensor, dockerd and a test host");
    let host = sc.host("quiet");
    host.serve_http(PORT, &[("payload", b"payload-for-a-quiet-build\n")]);
    let sensor = sc.start_sensor(&[
        "--stats-interval",
        "0",
        "--kinds",
        "sensor_started,build_started,build_finished,sensor_stats",
    ]);
    (sc, host, sensor)
}

fn dockerfile(host: &TestHost) -> String {
    format!(
        "FROM {BASE}\nRUN wget -q -O /x {}\nRUN echo second > /y\n",
        host.url(PORT, "payload")
    )
}

/// The one `build_finished` of `tag`; fails when a second build record (a partial one, or a
/// second record for the tag) shows that the build was split.
fn whole_build(
    sc: &Scenario,
    sensor: &SensorProcess,
    tag: &str,
    host: &TestHost,
    builder: &str,
) -> Value {
    let f = build_record(sensor, "build_finished", tag, WAIT);
    eprintln!("{f}");
    assert_fields(
        &f,
        &[
            ("builder", eq(builder)),
            ("status", eq("succeeded")),
            ("partial", eq(false)),
            ("image_id", eq(sc.image_id(tag))),
        ],
    );
    let wget = format!("/bin/sh -c wget -q -O /x {}", host.url(PORT, "payload"));
    let expected = [
        (wget.clone(), Some(0)),
        ("/bin/sh -c echo second > /y".to_string(), Some(0)),
    ];
    let all = f["steps"].as_array().unwrap();
    // BuildKit's quiet stream names no step: with one build open the daemon's executors are
    // taken as its steps, so a step of another build whose request this sensor never saw (one
    // begun before it started, by another user of this shared daemon) can land here. Those are
    // shown, not failed on; on a quiet host there are none.
    let (own, foreign): (Vec<&Value>, Vec<&Value>) = all.iter().partition(|s| {
        builder != "buildkit" || expected.iter().any(|(c, _)| s["command"] == c.as_str())
    });
    if !foreign.is_empty() {
        eprintln!("steps of builds the sensor did not see: {foreign:?}");
    }
    let steps: Vec<(String, Option<i64>)> = own
        .iter()
        .map(|s| {
            (
                s["command"].as_str().unwrap_or("").to_string(),
                s["exit_code"].as_i64(),
            )
        })
        .collect();
    assert_eq!(steps, expected, "{f}");
    let wget_index = own[0]["index"].to_string();
    assert!(
        has_outbound(&f, &host.ip().to_string(), PORT, &wget_index),
        "outbound to the test host by the wget step expected: {f}"
    );
    // No other build record of this daemon was opened for these steps: a split build shows as
    // a second, partial build holding the step.
    let split: Vec<Value> = sensor
        .records_of_kind("build_finished")
        .into_iter()
        .filter(|r| {
            r["build_id"] != f["build_id"]
                && r["steps"].as_array().is_some_and(|s| {
                    s.iter().any(|s| {
                        s["command"]
                            .as_str()
                            .is_some_and(|c| c.contains(&host.url(PORT, "payload")))
                    })
                })
        })
        .collect();
    assert!(split.is_empty(), "the build was split: {split:?}");
    f
}

/// `docker build -q` of the downloading Dockerfile: one whole record, within a second.
fn quiet_docker_build_is_whole(builder: Builder, name: &str) -> Value {
    let (sc, host, mut sensor) = setup();
    let ctx = BuildContext::new(&dockerfile(&host));
    let tag = sc.tag(name);
    let out = docker_build_quiet(ctx.path(), &tag, builder);
    let returned = Instant::now();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    build_record(&sensor, "build_finished", &tag, WAIT);
    let latency = returned.elapsed();
    let expect_builder = match builder {
        Builder::Legacy => "legacy",
        Builder::BuildKit => "buildkit",
    };
    let f = whole_build(&sc, &sensor, &tag, &host, expect_builder);
    eprintln!("build_finished {latency:?} after docker build -q returned");
    assert_eq!(
        printed,
        sc.image_id(&tag),
        "docker build -q prints the image id"
    );
    assert_fields(
        &f,
        &[
            ("client.exe", eq("/usr/bin/docker")),
            ("params.quiet", eq(true)),
        ],
    );
    // The record goes out at the end of the response, not after a grace period (it was about
    // 1.7 s before); generous against a loaded machine.
    assert!(
        latency < Duration::from_secs(1),
        "build_finished came {latency:?} late"
    );
    sensor.stop().unwrap();
    f
}

#[test]
fn legacy_quiet_docker_build_is_whole() {
    let f = quiet_docker_build_is_whole(Builder::Legacy, "quiet-legacy");
    // The stream named no container: each step was tied to the build by the image it wrote.
    for s in f["steps"].as_array().unwrap() {
        assert_eq!(s["attribution"], "image_store", "{f}");
    }
}

#[test]
fn buildkit_quiet_docker_build_is_whole() {
    quiet_docker_build_is_whole(Builder::BuildKit, "quiet-buildkit");
}

#[test]
fn curl_quiet_api_build_is_whole() {
    let (sc, host, mut sensor) = setup();
    let tag = sc.tag("quiet-curl");
    let body = curl_build(&dockerfile(&host), &format!("q=1&nocache=1&t={tag}"));
    let id = sc.image_id(&tag);
    assert!(
        body.contains(&id),
        "the quiet stream ends with the image id: {body}"
    );
    let f = whole_build(&sc, &sensor, &tag, &host, "legacy");
    assert_fields(
        &f,
        &[(
            "client.exe",
            satisfies("a path ending in /curl", |e| {
                e.as_str().is_some_and(|e| e.ends_with("/curl"))
            }),
        )],
    );
    sensor.stop().unwrap();
}

fn quiet_legacy_build(dockerfile: String, tag: String) -> thread::JoinHandle<bool> {
    quiet_build(Builder::Legacy, dockerfile, tag)
}

/// `docker build -q` on a thread; whether it succeeded.
fn quiet_build(builder: Builder, dockerfile: String, tag: String) -> thread::JoinHandle<bool> {
    thread::spawn(move || {
        let ctx = BuildContext::new(&dockerfile);
        docker_build_quiet(ctx.path(), &tag, builder)
            .status
            .success()
    })
}

fn commands(f: &Value) -> Vec<String> {
    f["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["command"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Two quiet legacy builds at once: the stream names no container, so each step is tied to a
/// build by the image that build wrote, or counted as unattributed; never given to the other.
#[test]
fn overlapping_quiet_legacy_builds_are_never_mixed_up() {
    let (sc, _host, mut sensor) = setup();
    let tags: Vec<String> = (0..2)
        .map(|i| sc.tag(&format!("quiet-overlap-{i}")))
        .collect();
    let run_text = |i: usize| format!("sleep 2 && echo first-{i}");
    let builds: Vec<_> = (0..2)
        .map(|i| {
            quiet_legacy_build(
                format!(
                    "FROM {BASE}\nRUN {}\nRUN sleep 1 && echo second-{i}\n",
                    run_text(i)
                ),
                tags[i].clone(),
            )
        })
        .collect();
    for b in builds {
        assert!(b.join().unwrap(), "a quiet build failed");
    }
    for (i, tag) in tags.iter().enumerate() {
        let f = build_record(&sensor, "build_finished", tag, WAIT);
        eprintln!("{f}");
        assert_fields(
            &f,
            &[
                ("status", eq("succeeded")),
                ("image_id", eq(sc.image_id(tag))),
            ],
        );
        assert_eq!(
            commands(&f),
            [
                format!("/bin/sh -c {}", run_text(i)),
                format!("/bin/sh -c sleep 1 && echo second-{i}")
            ],
            "build {i} got another build's steps, or lost its own"
        );
        remove_image(tag);
    }

    // One of two fails while the other runs: the failed step could be either's until both
    // end, and the failed build wrote no image to tell: it is counted, not guessed.
    let ok = sc.tag("quiet-overlap-ok");
    let bad = sc.tag("quiet-overlap-bad");
    let a = quiet_legacy_build(
        format!("FROM {BASE}\nRUN sleep 3 && echo a-ok\n"),
        ok.clone(),
    );
    thread::sleep(Duration::from_millis(300));
    let b = quiet_legacy_build(format!("FROM {BASE}\nRUN sleep 1 && exit 3\n"), bad.clone());
    assert!(a.join().unwrap());
    assert!(!b.join().unwrap());
    let fa = build_record(&sensor, "build_finished", &ok, WAIT);
    assert_fields(&fa, &[("status", eq("succeeded"))]);
    assert_eq!(commands(&fa), ["/bin/sh -c sleep 3 && echo a-ok"], "{fa}");
    sensor.stop().unwrap();
    let finished = sensor.records_of_kind("build_finished");
    let fb = finished
        .iter()
        .find(|r| {
            r["params"]["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|x| x == bad.as_str()))
        })
        .unwrap_or_else(|| panic!("no build_finished for {bad}"));
    eprintln!("{fb}");
    assert_fields(fb, &[("status", eq("failed"))]);
    let own = commands(fb);
    assert!(
        own.is_empty() || own == ["/bin/sh -c sleep 1 && exit 3"],
        "the failed build got another build's step: {fb}"
    );
    let stats = sensor.records_of_kind("sensor_stats");
    let last = stats.last().expect("final sensor_stats");
    let unattributed = last["drops"]["steps_unattributed"].as_u64().unwrap();
    assert_eq!(
        own.len() as u64 + unattributed,
        1,
        "the failed step is either the failed build's or counted: {last}"
    );
}

/// Two quiet BuildKit builds at once: BuildKit's quiet stream carries no progress to match RUN
/// text against, so with two open each step is the one build's only if it was alone, else
/// counted; never the other build's.
#[test]
fn overlapping_quiet_buildkit_builds_are_never_mixed_up() {
    let (sc, _host, mut sensor) = setup();
    let tags: Vec<String> = (0..2)
        .map(|i| sc.tag(&format!("quiet-bk-overlap-{i}")))
        .collect();
    let builds: Vec<_> = (0..2)
        .map(|i| {
            quiet_build(
                Builder::BuildKit,
                format!("FROM {BASE}\nRUN sleep 2 && echo bk-first-{i}\nRUN echo bk-second-{i}\n"),
                tags[i].clone(),
            )
        })
        .collect();
    for b in builds {
        assert!(b.join().unwrap(), "a quiet build failed");
    }
    let mut attributed = 0;
    for (i, tag) in tags.iter().enumerate() {
        let f = build_record(&sensor, "build_finished", tag, WAIT);
        eprintln!("{f}");
        assert_fields(
            &f,
            &[
                ("status", eq("succeeded")),
                ("image_id", eq(sc.image_id(tag))),
            ],
        );
        for c in commands(&f) {
            assert!(
                c.ends_with(&format!("-{i}")),
                "build {i} got another build's step {c:?}: {f}"
            );
        }
        attributed += commands(&f).len() as u64;
    }
    sensor.stop().unwrap();
    let stats = sensor.records_of_kind("sensor_stats");
    let last = stats.last().expect("final sensor_stats");
    let unattributed = last["drops"]["steps_unattributed"].as_u64().unwrap();
    assert!(
        attributed + unattributed >= 4,
        "each of the 4 steps is a build's or counted ({attributed} + {unattributed}): {last}"
    );
}
