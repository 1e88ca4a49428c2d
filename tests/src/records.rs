//! Assertions on the sensor's records shared by the end-to-end tests.
use std::time::Duration;

use serde_json::Value;

use crate::{SensorProcess, contains, nearest, workspace_root};

/// Whether a build record names `tag`, as a requested tag (`params.tags`) or an image tag
/// (`tags`).
pub fn has_tag(r: &Value, tag: &str) -> bool {
    [&r["tags"], &r["params"]["tags"]]
        .iter()
        .any(|l| l.as_array().is_some_and(|a| a.iter().any(|t| t == tag)))
}

/// Whether a build record lists an outbound connection to `addr:port` made by `made_by` (a step
/// index, or `daemon`).
pub fn has_outbound(r: &Value, addr: &str, port: u16, made_by: &str) -> bool {
    r["outbound"].as_array().is_some_and(|a| {
        a.iter()
            .any(|o| o["dst_addr"] == addr && o["dst_port"] == port && o["made_by"] == made_by)
    })
}

/// A build record's steps as (command, exit code), in order.
pub fn build_steps(f: &Value) -> Vec<(String, Option<i64>)> {
    f["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .map(|s| {
                    (
                        s["command"].as_str().unwrap_or_default().to_string(),
                        s["exit_code"].as_i64(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The first record of `kind` (`build_started`, `build_finished`) for the build of `tag`;
/// panics, naming both, when none comes within `wait`.
pub fn build_record(sensor: &SensorProcess, kind: &str, tag: &str, wait: Duration) -> Value {
    sensor
        .wait_for(|r| r["kind"] == kind && has_tag(r, tag), wait)
        .unwrap_or_else(|e| {
            let near = nearest(
                &sensor.records_lenient(),
                kind,
                &[("params.tags", contains(tag))],
            );
            panic!("no {kind} for {tag}: {e:#}\n{near}")
        })
}

/// Every record validates against the checked-in schema/records.schema.json.
pub fn assert_records_match_schema(records: &[Value]) {
    let path = workspace_root().join("schema/records.schema.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let schema: Value = serde_json::from_str(&text).unwrap();
    let v = jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("schema does not compile: {e}"));
    let mut bad = Vec::new();
    for r in records {
        let errors: Vec<String> = v
            .iter_errors(r)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if !errors.is_empty() {
            bad.push(format!("{}: {}\n  {r}", r["kind"], errors.join("; ")));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} records do not match the schema:\n{}",
        bad.len(),
        records.len(),
        bad.join("\n")
    );
}
