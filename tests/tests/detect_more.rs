//! Live tests of the rest of issue 5: the AN0946 chain through a local registry, overlapping
//! builds that talk to different hosts, the policy's allowed case and its SIGHUP reload, and the
//! quiet side of `deploy_soon_after_build`.
//!
//! Network traffic goes only to loopback (the registry listens on 127.0.0.1) and to test hosts
//! in network namespaces these tests create. Every record the sensor writes is validated against
//! schema/records.schema.json.
//!
//! Run as root, one test at a time, with the release sensor built:
//! `cargo build --release -p sensor && cargo test -p sensor-tests --test detect_more -- --test-threads=1`
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use sensor_tests::{
    BuildContext, Builder, Cmd, ContainerGuard, Dockerd, ImageGuard, LocalRegistry, SensorProcess,
    TestHost, assert_records_match_schema, build_record, docker_cli, ensure_base_image,
    require_root, run, tail_file, unique_tag,
};
use serde_json::Value;

const BASE: &str = "localbase:1";
const WAIT: Duration = Duration::from_secs(60);

fn finished(sensor: &SensorProcess, tag: &str) -> Value {
    build_record(sensor, "build_finished", tag, WAIT)
}

fn docker_out(args: &[&str]) -> String {
    String::from_utf8_lossy(&run(docker_cli(), args).stdout)
        .trim()
        .to_string()
}

fn image_id(tag: &str) -> String {
    docker_out(&["image", "inspect", "--format", "{{.Id}}", tag])
}

fn write(path: &Path, text: &str) {
    // Write-then-rename: the sensor never reads a half-written policy.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn sighup(sensor: &SensorProcess) {
    let pid = sensor.pid();
    assert!(pid > 0, "the sensor is not running");
    // SAFETY: kill only sends a signal, to our own child that has not been reaped.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) };
    assert_eq!(rc, 0, "kill(SIGHUP): {}", std::io::Error::last_os_error());
}

/// Waits until the sensor's stderr has `n` lines containing `needle`; returns those lines.
fn wait_stderr_lines(sensor: &SensorProcess, needle: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(sensor.stderr_path()).unwrap_or_default();
        let lines: Vec<String> = text
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect();
        if lines.len() >= n || Instant::now() >= deadline {
            return lines;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

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
    require_root("the push chain (dockerd, a local registry, eBPF)");
    Dockerd::ensure();
    ensure_base_image(BASE);
    // dockerd must allow plain HTTP to loopback registries (its default): checked, not assumed.
    let insecure = docker_out(&[
        "info",
        "--format",
        "{{json .RegistryConfig.InsecureRegistryCIDRs}}",
    ]);
    assert!(
        insecure.contains("127.0.0.0/8"),
        "dockerd does not treat 127.0.0.0/8 as insecure: {insecure}"
    );
    let registry = LocalRegistry::start();
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("state");
    let sensor = SensorProcess::start(&["--state-dir", state_dir.to_str().unwrap()]).unwrap();

    let tag = unique_tag("detect-chain");
    let (repo, version) = tag.split_once(':').unwrap();
    let pushed = format!("{}/{repo}:{version}", registry.host());
    let _images = ImageGuard(vec![pushed.clone(), tag.clone()]);
    BuildContext::new(&format!("FROM {BASE}\nRUN echo implanted > /implant\n"))
        .build(&tag, Builder::BuildKit);
    let build = finished(&sensor, &tag);
    let build_id = build["build_id"].as_str().unwrap().to_string();
    let image = image_id(&tag);
    assert_eq!(build["image_id"], image.as_str(), "{build}");

    run(docker_cli(), &["tag", &tag, &pushed]);
    let repo_digest = registry.push(&pushed);
    let (_, digest) = repo_digest
        .split_once('@')
        .unwrap_or_else(|| panic!("no digest in {repo_digest}"));

    let push = sensor
        .wait_for(
            |r| r["kind"] == "image_push" && r["reference"] == pushed.as_str(),
            WAIT,
        )
        .unwrap_or_else(|e| panic!("no image_push for {pushed}: {e:#}"));
    assert_eq!(push["digest"], digest, "{push}");
    assert_eq!(push["registry"], registry.host().as_str(), "{push}");
    assert_eq!(push["image_id"], image.as_str(), "{push}");
    assert_eq!(push["build_id"], build_id.as_str(), "{push}");
    assert_eq!(push["client"]["transport"], "unix", "{push}");
    assert_eq!(push["client"]["exe"], docker_cli(), "{push}");
    assert!(
        push["client"]["pid"].as_u64().is_some_and(|p| p > 0),
        "{push}"
    );
    // Issue 11: the image's provenance statement gains the pushed manifest as a subject.
    let hex = digest.trim_start_matches("sha256:");
    let prov = sensor
        .wait_for(
            |r| {
                r["kind"] == "image_provenance"
                    && r["statement"]["subject"].as_array().is_some_and(|s| {
                        s.iter()
                            .any(|x| x["name"] == pushed.as_str() && x["digest"]["sha256"] == hex)
                    })
            },
            WAIT,
        )
        .unwrap_or_else(|e| panic!("no image_provenance naming {pushed}@{digest}: {e:#}"));
    assert_eq!(prov["build_id"], build_id.as_str(), "{prov}");
    assert_eq!(prov["image_id"], image.as_str(), "{prov}");

    let name = format!("detect-chain-{}", std::process::id());
    let _container = ContainerGuard(name.clone());
    run(
        docker_cli(),
        &["run", "-d", "--name", &name, &pushed, "sleep", "60"],
    );
    let start = sensor
        .wait_for(
            |r| r["kind"] == "container_start" && r["name"] == name.as_str(),
            WAIT,
        )
        .unwrap_or_else(|e| panic!("no container_start for {name}: {e:#}"));
    assert_eq!(start["build_id"], build_id.as_str(), "{start}");
    assert_eq!(start["image_id"], image.as_str(), "{start}");
    let container_id = start["container_id"].as_str().unwrap().to_string();

    let chain = sensor
        .wait_for(
            |r| {
                r["kind"] == "finding"
                    && r["rule"] == "build_push_deploy_chain"
                    && r["container_id"] == container_id.as_str()
            },
            WAIT,
        )
        .unwrap();
    assert_eq!(chain["analytics"][0], "AN0946", "{chain}");
    assert_eq!(chain["build_id"], build_id.as_str(), "{chain}");
    assert_eq!(chain["image_id"], image.as_str(), "{chain}");
    assert_eq!(chain["severity"], "high", "{chain}");
    assert_eq!(
        chain["details"]["pushed_reference"],
        pushed.as_str(),
        "{chain}"
    );
    assert_eq!(chain["details"]["pushed_digest"], digest, "{chain}");
    assert_eq!(
        chain["details"]["registry"],
        registry.host().as_str(),
        "{chain}"
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
    drop(sensor);
}

/// The AN0946 chain across a sensor restart: the push is remembered in the lineage store, so
/// a container started under the next sensor run still completes the chain.
#[test]
fn push_survives_a_sensor_restart_and_completes_the_chain() {
    require_root("the push chain (dockerd, a local registry, eBPF)");
    Dockerd::ensure();
    ensure_base_image(BASE);
    let registry = LocalRegistry::start();
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("state");
    let args = ["--state-dir", state_dir.to_str().unwrap()];
    let mut sensor = SensorProcess::start(&args).unwrap();

    let tag = unique_tag("detect-chain-restart");
    let (repo, version) = tag.split_once(':').unwrap();
    // Built straight under the registry's name this time: the push's tag is the build's tag.
    let pushed = format!("{}/{repo}:{version}", registry.host());
    let _images = ImageGuard(vec![pushed.clone()]);
    BuildContext::new(&format!("FROM {BASE}\nRUN echo implanted > /implant\n"))
        .build(&pushed, Builder::Legacy);
    let build = finished(&sensor, &pushed);
    let build_id = build["build_id"].as_str().unwrap().to_string();
    let repo_digest = registry.push(&pushed);
    let digest = repo_digest.split_once('@').unwrap().1.to_string();
    let push = sensor
        .wait_for(
            |r| r["kind"] == "image_push" && r["reference"] == pushed.as_str(),
            WAIT,
        )
        .unwrap_or_else(|e| {
            panic!(
                "no image_push for {pushed}: {e:#}\n{}",
                api_records(&sensor)
            )
        });
    assert_eq!(push["digest"], digest.as_str(), "{push}");
    assert_eq!(push["build_id"], build_id.as_str(), "{push}");
    let mut all = sensor.records();
    assert_eq!(sensor.stop().unwrap().code(), Some(0));

    let sensor = SensorProcess::start(&args).unwrap();
    let name = format!("detect-chain-restart-{}", std::process::id());
    let _container = ContainerGuard(name.clone());
    // Started by digest, as a deployment pinned to what was pushed would.
    run(
        docker_cli(),
        &["run", "-d", "--name", &name, &repo_digest, "sleep", "60"],
    );
    let start = sensor
        .wait_for(
            |r| r["kind"] == "container_start" && r["name"] == name.as_str(),
            WAIT,
        )
        .unwrap();
    assert_eq!(start["build_id"], build_id.as_str(), "{start}");
    let cid = start["container_id"].as_str().unwrap().to_string();
    let chain = sensor
        .wait_for(
            |r| {
                r["kind"] == "finding"
                    && r["rule"] == "build_push_deploy_chain"
                    && r["container_id"] == cid.as_str()
            },
            WAIT,
        )
        .unwrap();
    assert_eq!(
        chain["details"]["pushed_reference"],
        pushed.as_str(),
        "{chain}"
    );
    assert_eq!(
        chain["details"]["pushed_digest"],
        digest.as_str(),
        "{chain}"
    );
    assert!(
        chain["evidence"]["record_ids"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| *i == start["id"]),
        "the chain's evidence lacks this run's container_start: {chain}"
    );
    all.extend(sensor.records());
    assert_records_match_schema(&all);
    drop(sensor);
}

/// Issue 5: two builds at once (BuildKit and legacy, or two BuildKit), each downloading from its own test host,
/// while a container started on the host talks to a third one. Each build's outbound list holds
/// its own host only.
#[test]
fn overlapping_buildkit_and_legacy_builds_keep_their_own_outbound() {
    overlapping_builds_keep_their_own_outbound(Builder::BuildKit, Builder::Legacy);
}

#[test]
fn overlapping_buildkit_builds_keep_their_own_outbound() {
    overlapping_builds_keep_their_own_outbound(Builder::BuildKit, Builder::BuildKit);
}

fn builder_name(b: Builder) -> &'static str {
    if b == Builder::BuildKit {
        "buildkit"
    } else {
        "legacy"
    }
}

fn overlapping_builds_keep_their_own_outbound(builder_a: Builder, builder_b: Builder) {
    require_root("overlapping builds (dockerd, network namespaces, eBPF)");
    Dockerd::ensure();
    ensure_base_image(BASE);
    let host_a = TestHost::new("ovl-a");
    let host_b = TestHost::new("ovl-b");
    let host_c = TestHost::new("ovl-c");
    for h in [&host_a, &host_b, &host_c] {
        h.serve_http(8091, &[("payload", b"payload\n")]);
    }
    let ips: Vec<String> = [&host_a, &host_b, &host_c]
        .iter()
        .map(|h| h.ip().to_string())
        .collect();
    assert!(
        ips[0] != ips[1] && ips[1] != ips[2] && ips[0] != ips[2],
        "{ips:?}"
    );
    let state = tempfile::tempdir().unwrap();
    let sensor =
        SensorProcess::start(&["--state-dir", state.path().join("state").to_str().unwrap()])
            .unwrap();

    // Each RUN fetches several times over a few seconds, so the two builds' traffic interleaves.
    let fetches =
        |url: &str| format!("for i in 1 2 3 4 5; do wget -q -O /dev/null {url}; sleep 1; done");
    let tag_a = unique_tag(&format!("detect-ovl-a-{}", builder_name(builder_a)));
    let tag_b = unique_tag(&format!("detect-ovl-b-{}", builder_name(builder_b)));
    let _images = ImageGuard(vec![tag_a.clone(), tag_b.clone()]);
    let ctx_a = BuildContext::new(&format!(
        "FROM {BASE}\nRUN {}\n",
        fetches(&host_a.url(8091, "payload"))
    ));
    let ctx_b = BuildContext::new(&format!(
        "FROM {BASE}\nRUN {}\n",
        fetches(&host_b.url(8091, "payload"))
    ));
    let name = format!("detect-ovl-{}", std::process::id());
    let _container = ContainerGuard(name.clone());
    let url_c = host_c.url(8091, "payload");
    thread::scope(|s| {
        let a = s.spawn(|| ctx_a.build(&tag_a, builder_a));
        let b = s.spawn(|| ctx_b.build(&tag_b, builder_b));
        run(
            docker_cli(),
            &[
                "run",
                "-d",
                "--name",
                &name,
                BASE,
                "sh",
                "-c",
                &fetches(&url_c),
            ],
        );
        a.join().unwrap();
        b.join().unwrap();
    });

    let fa = finished(&sensor, &tag_a);
    let fb = finished(&sensor, &tag_b);
    assert_eq!(fa["builder"], builder_name(builder_a), "{fa}");
    assert_eq!(fb["builder"], builder_name(builder_b), "{fb}");
    assert_ne!(fa["build_id"], fb["build_id"]);
    // The builds really overlapped in time.
    let ts = |r: &Value, k: &str| r[k].as_str().unwrap().to_string();
    // (RFC 3339 with nanoseconds, always the same width: compared as strings; `ts` is the end.)
    assert!(
        ts(&fa, "started") < ts(&fb, "ts") && ts(&fb, "started") < ts(&fa, "ts"),
        "{fa}\n{fb}"
    );
    for (f, own, others) in [
        (&fa, &ips[0], [&ips[1], &ips[2]]),
        (&fb, &ips[1], [&ips[0], &ips[2]]),
    ] {
        let out = f["outbound"].as_array().unwrap();
        let mine: Vec<&Value> = out
            .iter()
            .filter(|o| o["dst_addr"] == own.as_str())
            .collect();
        assert!(!mine.is_empty(), "no outbound to its own host {own}: {f}");
        for o in &mine {
            assert_eq!(o["made_by"], "1", "{o} in {f}");
            assert_eq!(o["dst_port"], 8091, "{o}");
        }
        for other in others {
            assert!(
                !out.iter().any(|o| o["dst_addr"] == other.as_str()),
                "outbound to {other} in {f}"
            );
        }
    }
    // The container did reach its host while the builds ran, and the sensor saw it (else the
    // negative above would prove nothing).
    let start = sensor
        .wait_for(
            |r| r["kind"] == "container_start" && r["name"] == name.as_str(),
            WAIT,
        )
        .unwrap();
    assert!(start["build_id"].is_null(), "{start}");
    let to_c = sensor
        .wait_for(
            |r| r["kind"] == "connect" && r["dst_addr"] == ips[2].as_str() && r["dst_port"] == 8091,
            WAIT,
        )
        .unwrap_or_else(|e| panic!("the sensor saw no connect to {}: {e:#}", ips[2]));
    let during = |f: &Value| ts(&to_c, "ts") > ts(f, "started") && ts(&to_c, "ts") < ts(f, "ts");
    assert!(
        during(&fa) || during(&fb),
        "the container's first connect {to_c} is outside both builds"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let logs = Cmd::new(docker_cli())
            .args(["inspect", "--format", "{{.State.Running}}", &name])
            .run();
        if String::from_utf8_lossy(&logs.stdout).trim() == "false" || Instant::now() >= deadline {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    let code = docker_out(&["inspect", "--format", "{{.State.ExitCode}}", &name]);
    assert_eq!(code, "0", "the container's wget to {} failed", ips[2]);
    assert_records_match_schema(&sensor.records());
    drop(sensor);
}

/// Builders allow-list and allowed registries that cover the build: quiet. Then reloads.
fn policy(outbound: &str) -> String {
    format!(
        "[builders]\nexes = [\"{}\"]\n\n[outbound]\n{outbound}\n",
        docker_cli()
    )
}

/// Issue 5: the policy's allowed case stays quiet live, and SIGHUP reloads it (a malformed file
/// keeps the previous policy, with one line on stderr).
#[test]
fn allowed_policy_is_quiet_and_sighup_reloads_it() {
    require_root("policy reloads (dockerd, network namespaces, eBPF)");
    Dockerd::ensure();
    ensure_base_image(BASE);
    let mirror = TestHost::new("mirror");
    mirror.serve_http(8092, &[("pkg", b"package\n")]);
    let ip = mirror.ip().to_string();
    let url = mirror.url(8092, "pkg");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    let allowing = policy(&format!("allowed = [\"{ip}\"]"));
    write(&path, &allowing);
    let sensor = SensorProcess::start(&[
        "--policy",
        path.to_str().unwrap(),
        "--state-dir",
        dir.path().join("state").to_str().unwrap(),
    ])
    .unwrap();
    let mut images = ImageGuard(Vec::new());

    let mut build = |name: &str| -> (String, Value) {
        let tag = unique_tag(name);
        images.0.push(tag.clone());
        BuildContext::new(&format!("FROM {BASE}\nRUN wget -q -O /pkg {url}\n"))
            .build(&tag, Builder::BuildKit);
        let f = finished(&sensor, &tag);
        let to_mirror: Vec<Value> = f["outbound"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["dst_addr"] == ip.as_str())
            .cloned()
            .collect();
        assert!(!to_mirror.is_empty(), "no outbound to the mirror {ip}: {f}");
        (
            f["build_id"].as_str().unwrap().to_string(),
            Value::Array(to_mirror),
        )
    };
    let finding_for = |rule: &'static str, id: String| {
        move |r: &Value| r["kind"] == "finding" && r["rule"] == rule && r["build_id"] == id.as_str()
    };

    // 1. Allowed mirror, allowed builder: classed `allowed`, no finding.
    let (id1, out1) = build("detect-policy-allowed");
    assert!(
        out1.as_array()
            .unwrap()
            .iter()
            .all(|o| o["policy"] == "allowed"),
        "{out1}"
    );
    sensor
        .expect_none(
            finding_for("build_outbound_not_allowed", id1.clone()),
            Duration::from_secs(2),
        )
        .unwrap();
    sensor
        .expect_none(
            finding_for("build_from_unexpected_client", id1.clone()),
            Duration::from_millis(100),
        )
        .unwrap();

    // 2. The allowance dropped, the mirror denied: SIGHUP, the next build fires.
    write(
        &path,
        &policy(&format!(
            "allowed = [\"registry.corp.example\"]\ndenied = [\"{ip}/32\"]"
        )),
    );
    sighup(&sensor);
    let ok = wait_stderr_lines(&sensor, "policy reloaded", 1);
    assert_eq!(
        ok.len(),
        1,
        "no reload line on stderr: {}",
        tail_file(sensor.stderr_path(), 20)
    );
    let (id2, out2) = build("detect-policy-denied");
    assert!(
        out2.as_array()
            .unwrap()
            .iter()
            .all(|o| o["policy"] == "denied"),
        "{out2}"
    );
    let f = sensor
        .wait_for(finding_for("build_outbound_not_allowed", id2.clone()), WAIT)
        .unwrap();
    assert_eq!(f["severity"], "high", "{f}");
    assert!(f["summary"].as_str().unwrap().contains(&ip), "{f}");
    sensor
        .expect_none(
            finding_for("build_from_unexpected_client", id2),
            Duration::from_millis(100),
        )
        .unwrap();

    // 3. A malformed file (the allowing policy plus an unknown key): refused whole, the
    // sensor keeps running with policy 2, and says why in one stderr line.
    write(
        &path,
        &format!("{allowing}\n[rules.deploy_soon_after_build]\nwindow = 5\n"),
    );
    sighup(&sensor);
    let refused = wait_stderr_lines(&sensor, "keeping the previous policy", 1);
    assert_eq!(
        refused.len(),
        1,
        "stderr: {}",
        tail_file(sensor.stderr_path(), 20)
    );
    assert!(
        refused[0].contains("window") && refused[0].contains(path.to_str().unwrap()),
        "{}",
        refused[0]
    );
    let (id3, out3) = build("detect-policy-kept");
    assert!(
        out3.as_array()
            .unwrap()
            .iter()
            .all(|o| o["policy"] == "denied"),
        "{out3}"
    );
    sensor
        .wait_for(finding_for("build_outbound_not_allowed", id3), WAIT)
        .unwrap();
    // Still one line about it, and the sensor is alive.
    assert_eq!(
        wait_stderr_lines(&sensor, "keeping the previous policy", 2).len(),
        1
    );
    assert!(
        sensor
            .records()
            .iter()
            .all(|r| r["kind"] != "sensor_stopped")
    );
    assert_records_match_schema(&sensor.records());
    drop(sensor);
    drop(images);
}

/// Issue 5: `deploy_soon_after_build` with a 1 s window: a container started later is quiet.
#[test]
fn deploy_after_the_window_is_quiet() {
    require_root("the deploy window (dockerd, eBPF)");
    Dockerd::ensure();
    ensure_base_image(BASE);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    write(&path, "[rules.deploy_soon_after_build]\nwindow_secs = 1\n");
    let sensor = SensorProcess::start(&[
        "--policy",
        path.to_str().unwrap(),
        "--state-dir",
        dir.path().join("state").to_str().unwrap(),
    ])
    .unwrap();
    let tag = unique_tag("detect-window");
    let _images = ImageGuard(vec![tag.clone()]);
    BuildContext::new(&format!("FROM {BASE}\nRUN echo built > /built\n"))
        .build(&tag, Builder::BuildKit);
    let build = finished(&sensor, &tag);
    let build_id = build["build_id"].as_str().unwrap().to_string();
    thread::sleep(Duration::from_millis(2500));

    let name = format!("detect-window-{}", std::process::id());
    let _container = ContainerGuard(name.clone());
    run(
        docker_cli(),
        &["run", "-d", "--name", &name, &tag, "sleep", "30"],
    );
    let start = sensor
        .wait_for(
            |r| r["kind"] == "container_start" && r["name"] == name.as_str(),
            WAIT,
        )
        .unwrap();
    assert_eq!(start["build_id"], build_id.as_str(), "{start}");
    assert!(
        start["seconds_since_build"].as_u64().is_some_and(|s| s > 1),
        "{start}"
    );
    let cid = start["container_id"].as_str().unwrap().to_string();
    sensor
        .expect_none(
            |r| {
                r["kind"] == "finding"
                    && r["rule"] == "deploy_soon_after_build"
                    && r["container_id"] == cid.as_str()
            },
            Duration::from_secs(3),
        )
        .unwrap();
    assert_records_match_schema(&sensor.records());
    drop(sensor);
}
