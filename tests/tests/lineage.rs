//! A short-lived container (`docker run --rm`, gone within a second) started from an image
//! built on the host is still reported and linked to its build: the attacker's container need not
//! stay up for the sensor to see it. Checked against the dockerd the harness runs, whose
//! containerd keeps its task bundles under dockerd's own state directory.
use std::time::Duration;

use sensor_tests::*;

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn short_lived_container_from_a_host_built_image_is_linked_and_flagged() {
    require_root("loading eBPF programs");
    Dockerd::ensure();
    ensure_base_image("localbase:1");
    let state = tempfile::tempdir().unwrap();
    let mut sensor =
        SensorProcess::start(&["--state-dir", state.path().to_str().unwrap()]).unwrap();

    let tag = unique_tag("shortlived");
    BuildContext::new("FROM localbase:1\nRUN echo payload > /payload\n")
        .build(&tag, Builder::BuildKit);
    let built = sensor
        .wait_for(|r| is_build_finished_for(r, &tag), WAIT)
        .unwrap();
    assert_eq!(built["status"], "succeeded", "{built}");
    let build_id = built["build_id"].as_str().unwrap().to_string();

    let name = unique_tag("shortlived-run").replace([':', '.'], "-");
    run(
        docker_cli(),
        &["run", "--rm", "--name", &name, &tag, "true"],
    );
    let start = sensor
        .wait_for(
            |r| r["kind"] == "container_start" && r["name"] == name.as_str(),
            WAIT,
        )
        .unwrap();
    assert_eq!(start["build_id"], build_id.as_str(), "{start}");
    assert_eq!(start["image"], tag.as_str());
    assert_eq!(start["image_id"], built["image_id"]);
    assert_eq!(start["runtime"], "docker");
    assert_eq!(start["client"]["exe"], "/usr/bin/docker");
    assert!(start["seconds_since_build"].as_u64().is_some());
    let finding = sensor
        .wait_for(
            |r| {
                r["kind"] == "finding"
                    && r["rule"] == "deploy_soon_after_build"
                    && r["build_id"] == build_id.as_str()
            },
            WAIT,
        )
        .unwrap();
    assert_eq!(finding["container_id"], start["container_id"]);
    assert!(
        finding["attack"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "T1612")
    );
    assert!(sensor.stop().unwrap().success());
    remove_image(&tag);
}
