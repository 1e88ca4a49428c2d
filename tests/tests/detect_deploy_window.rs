//! The quiet side of `deploy_soon_after_build`, live: with a 1 s window, a container started
//! 2.5 s after its image was built is linked to the build and raises no finding.
//!
//! Every record the sensor writes is validated against schema/records.schema.json.
//!
//! Run as root, one test at a time, with the release sensor built:
//! `cargo build --release -p sensor && cargo test -p sensor-tests --test detect_deploy_window -- --test-threads=1`

use std::thread;
use std::time::Duration;

use sensor_tests::*;

const WAIT: Duration = Duration::from_secs(60);

/// Issue 5: `deploy_soon_after_build` with a 1 s window: a container started later is quiet.
#[test]
fn deploy_after_the_window_is_quiet() {
    let sc = Scenario::new("the deploy window (dockerd, eBPF)");
    let path = sc.write(
        "policy.toml",
        "[rules.deploy_soon_after_build]\nwindow_secs = 1\n",
    );
    let sensor = sc.start_sensor(&[
        "--policy",
        path.to_str().unwrap(),
        "--state-dir",
        &sc.state_dir(),
    ]);
    let tag = sc.build(
        "detect-window",
        &format!("FROM {BASE_IMAGE}\nRUN echo built > /built\n"),
        Builder::BuildKit,
    );
    let build = build_record(&sensor, "build_finished", &tag, WAIT);
    let build_id = build["build_id"].as_str().unwrap().to_string();
    thread::sleep(Duration::from_millis(2500));

    let name = sc.container_name("detect-window");
    sc.docker(&["run", "-d", "--name", &name, &tag, "sleep", "30"]);
    let start = sensor.expect_record("container_start", &[("name", eq(name.as_str()))], WAIT);
    assert_fields(
        &start,
        &[
            ("build_id", eq(build_id.as_str())),
            (
                "seconds_since_build",
                satisfies("more than 1 s", |s| s.as_u64().is_some_and(|s| s > 1)),
            ),
        ],
    );
    let cid = start["container_id"].as_str().unwrap().to_string();
    sensor.expect_no_record(
        "finding",
        &[
            ("rule", eq("deploy_soon_after_build")),
            ("container_id", eq(cid.as_str())),
        ],
        Duration::from_secs(3),
    );
    assert_records_match_schema(&sensor.records());
}
