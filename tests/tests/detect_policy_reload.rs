//! The policy live: its allowed case (an allowed builder talking to an allowed mirror) stays
//! quiet, and SIGHUP reloads it (a malformed file keeps the previous policy, with one line on
//! stderr).
//!
//! Network traffic goes only to a test host in a network namespace this test creates. Every
//! record the sensor writes is validated against schema/records.schema.json.
//!
//! Run as root, one test at a time, with the release sensor built:
//! `cargo build --release -p sensor && cargo test -p sensor-tests --test detect_policy_reload -- --test-threads=1`

use std::thread;
use std::time::{Duration, Instant};

use sensor_tests::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

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
    let sc = Scenario::new("policy reloads (dockerd, network namespaces, eBPF)");
    let mirror = sc.host("mirror");
    mirror.serve_http(8092, &[("pkg", b"package\n")]);
    let ip = mirror.ip().to_string();
    let url = mirror.url(8092, "pkg");
    let allowing = policy(&format!("allowed = [\"{ip}\"]"));
    let path = sc.write("policy.toml", &allowing);
    let sensor = sc.start_sensor(&[
        "--policy",
        path.to_str().unwrap(),
        "--state-dir",
        &sc.state_dir(),
    ]);

    let build = |name: &str| -> (String, Value) {
        let tag = sc.build(
            name,
            &format!("FROM {BASE_IMAGE}\nRUN wget -q -O /pkg {url}\n"),
            Builder::BuildKit,
        );
        let f = build_record(&sensor, "build_finished", &tag, WAIT);
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
    let finding_for = |rule: &str, id: &str| [("rule", eq(rule)), ("build_id", eq(id))];

    // 1. Allowed mirror, allowed builder: classed `allowed`, no finding.
    let (id1, out1) = build("detect-policy-allowed");
    assert!(
        out1.as_array()
            .unwrap()
            .iter()
            .all(|o| o["policy"] == "allowed"),
        "{out1}"
    );
    sensor.expect_no_record(
        "finding",
        &finding_for("build_outbound_not_allowed", &id1),
        Duration::from_secs(2),
    );
    sensor.expect_no_record(
        "finding",
        &finding_for("build_from_unexpected_client", &id1),
        Duration::from_millis(100),
    );

    // 2. The allowance dropped, the mirror denied: SIGHUP, the next build fires.
    sc.write(
        "policy.toml",
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
    let f = sensor.expect_record(
        "finding",
        &finding_for("build_outbound_not_allowed", &id2),
        WAIT,
    );
    assert_fields(
        &f,
        &[("severity", eq("high")), ("summary", contains(ip.as_str()))],
    );
    sensor.expect_no_record(
        "finding",
        &finding_for("build_from_unexpected_client", &id2),
        Duration::from_millis(100),
    );

    // 3. A malformed file (the allowing policy plus an unknown key): refused whole, the
    // sensor keeps running with policy 2, and says why in one stderr line.
    sc.write(
        "policy.toml",
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
    sensor.expect_record(
        "finding",
        &finding_for("build_outbound_not_allowed", &id3),
        WAIT,
    );
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
}
