//! AN0946 live: an image built on this host, pushed to a registry the test runs on 127.0.0.1,
//! then run; the `build_push_deploy_chain` finding, also across a sensor restart.
//!
//! Network traffic goes only to loopback. Every record the sensor writes is validated against
//! schema/records.schema.json.
//!
//! Run as root, one test at a time, with the release sensor built:
//! `cargo build --release -p sensor && cargo test -p sensor-tests --test detect_registry_chain -- --test-threads=1`

use std::time::Duration;

use sensor_tests::*;

const WAIT: Duration = Duration::from_secs(60);

/// The Engine API requests, pushes and builds the sensor saw, for failure messages.
fn api_records(sensor: &SensorProcess) -> String {
    let keep = [
        "api_request",
        "image_push",
        "build_started",
        "build_finished",
        "sensor_stats",
    ];
    sensor
        .records()
        .iter()
        .filter(|r| keep.iter().any(|k| r["kind"] == *k))
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Issue 5, AN0946: an image built on this host, pushed to a registry, then run.
#[test]
fn build_push_then_run_is_the_an0946_chain() {
    let sc = Scenario::new("the push chain (dockerd, a local registry, eBPF)");
    // dockerd must allow plain HTTP to loopback registries (its default): checked, not assumed.
    let insecure = sc.docker_out(&[
        "info",
        "--format",
        "{{json .RegistryConfig.InsecureRegistryCIDRs}}",
    ]);
    assert!(
        insecure.contains("127.0.0.0/8"),
        "dockerd does not treat 127.0.0.0/8 as insecure: {insecure}"
    );
    let registry = LocalRegistry::start();
    let sensor = sc.start_sensor(&["--state-dir", &sc.state_dir()]);

    let tag = sc.build(
        "detect-chain",
        &format!("FROM {BASE_IMAGE}\nRUN echo implanted > /implant\n"),
        Builder::BuildKit,
    );
    let (repo, version) = tag.split_once(':').unwrap();
    let pushed = format!("{}/{repo}:{version}", registry.host());
    sc.image(&pushed);
    let build = build_record(&sensor, "build_finished", &tag, WAIT);
    let build_id = build["build_id"].as_str().unwrap().to_string();
    let image = sc.image_id(&tag);
    assert_fields(&build, &[("image_id", eq(image.as_str()))]);

    sc.docker(&["tag", &tag, &pushed]);
    let repo_digest = registry.push(&pushed);
    let (_, digest) = repo_digest
        .split_once('@')
        .unwrap_or_else(|| panic!("no digest in {repo_digest}"));

    let push = sensor.expect_record("image_push", &[("reference", eq(pushed.as_str()))], WAIT);
    assert_fields(
        &push,
        &[
            ("digest", eq(digest)),
            ("registry", eq(registry.host())),
            ("image_id", eq(image.as_str())),
            ("build_id", eq(build_id.as_str())),
            ("client.transport", eq("unix")),
            ("client.exe", eq(docker_cli())),
            (
                "client.pid",
                satisfies("a pid > 0", |p| p.as_u64().is_some_and(|p| p > 0)),
            ),
        ],
    );
    // Issue 11: the image's provenance statement gains the pushed manifest as a subject.
    let hex = digest.trim_start_matches("sha256:").to_string();
    let prov = sensor.expect_record(
        "image_provenance",
        &[(
            "statement.subject",
            satisfies(&format!("a subject {pushed} with sha256 {hex}"), {
                let pushed = pushed.clone();
                move |s| {
                    s.as_array().is_some_and(|s| {
                        s.iter().any(|x| {
                            x["name"] == pushed.as_str() && x["digest"]["sha256"] == hex.as_str()
                        })
                    })
                }
            }),
        )],
        WAIT,
    );
    assert_fields(
        &prov,
        &[
            ("build_id", eq(build_id.as_str())),
            ("image_id", eq(image.as_str())),
        ],
    );

    let name = sc.container_name("detect-chain");
    sc.docker(&["run", "-d", "--name", &name, &pushed, "sleep", "60"]);
    let start = sensor.expect_record("container_start", &[("name", eq(name.as_str()))], WAIT);
    assert_fields(
        &start,
        &[
            ("build_id", eq(build_id.as_str())),
            ("image_id", eq(image.as_str())),
        ],
    );
    let container_id = start["container_id"].as_str().unwrap().to_string();

    let chain = sensor.expect_record(
        "finding",
        &[
            ("rule", eq("build_push_deploy_chain")),
            ("container_id", eq(container_id.as_str())),
        ],
        WAIT,
    );
    assert_fields(
        &chain,
        &[
            ("analytics.0", eq("AN0946")),
            ("build_id", eq(build_id.as_str())),
            ("image_id", eq(image.as_str())),
            ("severity", eq("high")),
            ("details.pushed_reference", eq(pushed.as_str())),
            ("details.pushed_digest", eq(digest)),
            ("details.registry", eq(registry.host())),
        ],
    );

    // The evidence points at real records of this run: the build, the push and the start.
    let records = sensor.records();
    let ids: Vec<u64> = chain["evidence"]["record_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap())
        .collect();
    for id in &ids {
        assert!(
            records.iter().any(|r| r["id"] == *id),
            "evidence id {id} is no record of this run: {chain}"
        );
    }
    for (what, rec) in [
        ("build_finished", &build),
        ("image_push", &push),
        ("container_start", &start),
    ] {
        let id = rec["id"].as_u64().unwrap();
        assert!(
            ids.contains(&id),
            "the chain's evidence lacks the {what} record {id}: {chain}"
        );
    }
    assert_records_match_schema(&records);
}

/// The AN0946 chain across a sensor restart: the push is remembered in the lineage store, so
/// a container started under the next sensor run still completes the chain.
#[test]
fn push_survives_a_sensor_restart_and_completes_the_chain() {
    let sc = Scenario::new("the push chain (dockerd, a local registry, eBPF)");
    let registry = LocalRegistry::start();
    let state = sc.state_dir();
    let args = ["--state-dir", state.as_str()];
    let mut sensor = sc.start_sensor(&args);

    let tag = unique_tag("detect-chain-restart");
    let (repo, version) = tag.split_once(':').unwrap();
    // Built straight under the registry's name this time: the push's tag is the build's tag.
    let pushed = format!("{}/{repo}:{version}", registry.host());
    sc.image(&pushed);
    BuildContext::new(&format!(
        "FROM {BASE_IMAGE}\nRUN echo implanted > /implant\n"
    ))
    .build(&pushed, Builder::Legacy);
    let build = build_record(&sensor, "build_finished", &pushed, WAIT);
    let build_id = build["build_id"].as_str().unwrap().to_string();
    let repo_digest = registry.push(&pushed);
    let digest = repo_digest.split_once('@').unwrap().1.to_string();
    let push = sensor
        .try_expect_record("image_push", &[("reference", eq(pushed.as_str()))], WAIT)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", api_records(&sensor)));
    assert_fields(
        &push,
        &[
            ("digest", eq(digest.as_str())),
            ("build_id", eq(build_id.as_str())),
        ],
    );
    let mut all = sensor.records();
    assert_eq!(sensor.stop().unwrap().code(), Some(0));

    let sensor = sc.start_sensor(&args);
    let name = sc.container_name("detect-chain-restart");
    // Started by digest, as a deployment pinned to what was pushed would.
    sc.docker(&["run", "-d", "--name", &name, &repo_digest, "sleep", "60"]);
    let start = sensor.expect_record("container_start", &[("name", eq(name.as_str()))], WAIT);
    assert_fields(&start, &[("build_id", eq(build_id.as_str()))]);
    let cid = start["container_id"].as_str().unwrap().to_string();
    let chain = sensor.expect_record(
        "finding",
        &[
            ("rule", eq("build_push_deploy_chain")),
            ("container_id", eq(cid.as_str())),
        ],
        WAIT,
    );
    assert_fields(
        &chain,
        &[
            ("details.pushed_reference", eq(pushed.as_str())),
            ("details.pushed_digest", eq(digest.as_str())),
            ("evidence.record_ids", contains(start["id"].clone())),
        ],
    );
    all.extend(sensor.records());
    assert_records_match_schema(&all);
}
