//! A sensor started in the middle of a build (BuildKit and legacy): the build is still
//! reported, marked partial, with what could be seen of it.
//!
//! Run as root after `cargo build --release -p sensor`:
//! `cargo test -p sensor-tests --test builds_partial -- --test-threads=1`.

use std::collections::HashMap;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sensor_tests::*;

const WAIT: Duration = Duration::from_secs(90);

/// Host pid -> (parent pid, comm, command line) of every process now.
fn processes() -> HashMap<u32, (u32, String, String)> {
    let mut all = HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses: split at the last ')'.
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map_or("", |(_, c)| c).to_string();
        let ppid = tail.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        let cmdline = std::fs::read(entry.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_default();
        if let Some(ppid) = ppid {
            all.insert(pid, (ppid, comm, cmdline));
        }
    }
    all
}

/// The pids of the `sleep`s under the step shells whose command line holds `marker`.
fn step_sleeps(marker: &str) -> Vec<u32> {
    let all = processes();
    let under_step = |mut pid: u32| {
        while let Some((ppid, _, cmdline)) = all.get(&pid) {
            if cmdline.contains(marker) {
                return true;
            }
            pid = *ppid;
        }
        false
    };
    all.iter()
        .filter(|(pid, (ppid, comm, _))| comm == "sleep" && **pid != 0 && under_step(*ppid))
        .map(|(pid, _)| *pid)
        .collect()
}

/// Ends the first step (SIGTERM to its `sleep`: the step then echoes and exits 0) and waits for
/// the build; on drop too, so that a failed test leaves no build waiting behind it.
struct HeldBuild {
    marker: String,
    build: Option<JoinHandle<std::process::Output>>,
}

impl HeldBuild {
    /// Releases the first step; returns how many `sleep`s it ended.
    fn release(&self) -> usize {
        let sleeps = step_sleeps(&self.marker);
        for pid in &sleeps {
            // SAFETY: kill only sends a signal; the pid is a `sleep` in this test's build step.
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGTERM) };
        }
        sleeps.len()
    }

    fn finish(&mut self) {
        let build = self.build.take().expect("the build was already finished");
        build.join().unwrap();
    }
}

impl Drop for HeldBuild {
    fn drop(&mut self) {
        if let Some(build) = self.build.take() {
            self.release();
            let _ = build.join();
        }
    }
}

/// The sensor starts while the first RUN runs: the build is still reported, partial. The first
/// step waits on a `sleep` the test ends once the sensor is up, so the step is running when
/// the sensor starts however slow the start is.
fn sensor_started_mid_build(builder: Builder) {
    let sc = Scenario::new("running the sensor and dockerd");
    let tag = sc.tag(&format!("builds-partial-{builder:?}"));
    let marker = tag.replace([':', '.'], "-");
    let first = format!("sleep 120 || echo first-{marker}");
    let ctx = BuildContext::new(&format!(
        "FROM {BASE_IMAGE}\nRUN {first}\nRUN echo second-{marker}\n"
    ));
    let mut held = HeldBuild {
        marker: format!("first-{marker}"),
        build: Some({
            let (path, tag) = (ctx.path().to_path_buf(), tag.clone());
            thread::spawn(move || docker_build(&path, &tag, builder))
        }),
    };
    // Start the sensor once the first step runs.
    let deadline = Instant::now() + Duration::from_secs(60);
    while step_sleeps(&held.marker).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the first step did not start within 60 s"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let mut sensor = sc.start_sensor(&[
        "--stats-interval",
        "0",
        "--kinds",
        "sensor_started,build_started,build_finished,sensor_stats",
    ]);
    assert!(
        held.release() > 0,
        "the first step's sleep is gone before the sensor started"
    );
    held.finish();
    let second = format!("echo second-{marker}");
    let f = sensor.expect_record(
        "build_finished",
        &[(
            "steps",
            satisfies(&format!("a step running {second}"), {
                let second = second.clone();
                move |steps| {
                    steps.as_array().is_some_and(|s| {
                        s.iter().any(|s| {
                            s["command"]
                                .as_str()
                                .is_some_and(|c| c.contains(second.as_str()))
                        })
                    })
                }
            }),
        )],
        WAIT,
    );
    eprintln!("{f}");
    let expect_builder = if builder == Builder::BuildKit {
        "buildkit"
    } else {
        "legacy"
    };
    assert_fields(
        &f,
        &[
            ("partial", eq(true)),
            ("client.transport", eq("unknown")),
            ("builder", eq(expect_builder)),
        ],
    );
    let seen = build_steps(&f);
    match builder {
        // The running step was seeded from /proc; the export (an image stored in dockerd's
        // image store while this was its only open build) ends the build.
        Builder::BuildKit => {
            assert_eq!(
                seen,
                [
                    (format!("/bin/sh -c {first}"), Some(0)),
                    (format!("/bin/sh -c {second}"), Some(0)),
                ],
                "{f}"
            );
            assert_fields(
                &f,
                &[
                    ("status", eq("succeeded")),
                    ("image_id", eq(sc.image_id(&tag))),
                ],
            );
        }
        // A running container is not taken for a build step (it could be anything), and the
        // end of a legacy build is on its connection, not watched: status unknown.
        Builder::Legacy => {
            assert_eq!(seen, [(format!("/bin/sh -c {second}"), Some(0))], "{f}");
            assert_fields(
                &f,
                &[("status", eq("unknown")), ("error", contains("partial"))],
            );
        }
    }
    sensor.stop().unwrap();
}

#[test]
fn sensor_started_mid_buildkit_build_reports_it_partial() {
    sensor_started_mid_build(Builder::BuildKit);
}

#[test]
fn sensor_started_mid_legacy_build_reports_it_partial() {
    sensor_started_mid_build(Builder::Legacy);
}
