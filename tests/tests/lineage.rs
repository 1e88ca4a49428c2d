//! A short-lived container (`docker run --rm`, gone within a second) started from an image
//! built on the host is still reported and linked to its build: the attacker's container need not
//! stay up for the sensor to see it. Checked against the dockerd the harness runs, whose
//! containerd keeps its task bundles under dockerd's own state directory.
use std::time::Duration;

use sensor_tests::*;

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn short_lived_container_from_a_host_built_image_is_linked_and_flagged() {
    let sc = Scenario::new("loading eBPF programs");
    let mut sensor = sc.start_sensor(&["--state-dir", &sc.state_dir()]);

    let tag = sc.build(
        "shortlived",
        &format!("FROM {BASE_IMAGE}\nRUN echo payload > /payload\n"),
        Builder::BuildKit,
    );
    let built = build_record(&sensor, "build_finished", &tag, WAIT);
    assert_fields(&built, &[("status", eq("succeeded"))]);
    let build_id = built["build_id"].as_str().unwrap().to_string();

    let name = sc.container_name("shortlived-run");
    sc.docker(&["run", "--rm", "--name", &name, &tag, "true"]);
    let start = sensor.expect_record("container_start", &[("name", eq(name.as_str()))], WAIT);
    assert_fields(
        &start,
        &[
            ("build_id", eq(build_id.as_str())),
            ("image", eq(tag.as_str())),
            ("image_id", eq(built["image_id"].clone())),
            ("runtime", eq("docker")),
            ("client.exe", eq("/usr/bin/docker")),
            (
                "seconds_since_build",
                satisfies("a number of seconds", |s| s.as_u64().is_some()),
            ),
        ],
    );
    let finding = sensor.expect_record(
        "finding",
        &[
            ("rule", eq("deploy_soon_after_build")),
            ("build_id", eq(build_id.as_str())),
        ],
        WAIT,
    );
    assert_fields(
        &finding,
        &[
            ("container_id", eq(start["container_id"].clone())),
            ("attack", contains("T1612")),
        ],
    );
    assert!(sensor.stop().unwrap().success());
}
