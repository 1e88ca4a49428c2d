//! Image contents and provenance, live: legacy and BuildKit builds on the real dockerd that
//! download an executable from a test host and delete a base-image file. Asserts the
//! `image_contents` record (the served file's sha256, the deletion as a whiteout, the file tied
//! to its URL), the `build_downloaded_executable` finding, and that every `image_provenance`
//! statement passes a strict parse by the in-toto attestation library (PyPI
//! `in-toto-attestation`) and that its DSSE envelope verifies with Python `cryptography`, and
//! fails once one payload byte is changed.
//!
//! Run as root after `cargo build --release -p sensor`:
//! `cargo test -p sensor-tests --test provenance -- --test-threads=1`.
use std::path::Path;
use std::time::Duration;

use sensor_tests::{
    BuildContext, Builder, Cmd, Scenario, SensorProcess, assert_records_match_schema, build_record,
    eq, nearest, run, sensor_bin, storage_base, storage_build, unique_tag,
};
use serde_json::Value;

const BASE: &str = "localbase:1";
const WAIT: Duration = Duration::from_secs(90);
/// The served executable: a shell script, so that the step can run what it fetched.
const TOOL: &[u8] = b"#!/bin/sh\necho fetched-tool-ran\n";

/// Strict parse of a statement with the in-toto attestation library: the Statement protobuf and
/// the SLSA Provenance v1 predicate, unknown fields rejected, then `Statement.validate()`.
const VALIDATE_STATEMENT: &str = r#"
import json, sys
from google.protobuf import json_format
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.statement import Statement
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
doc = json.load(sys.stdin)
st = json_format.ParseDict(doc, statement_pb2.Statement(), ignore_unknown_fields=False)
Statement.copy_from_pb(st).validate()
assert st.predicate_type == "https://slsa.dev/provenance/v1", st.predicate_type
prov = json_format.ParseDict(doc["predicate"], provenance_pb2.Provenance(), ignore_unknown_fields=False)
assert prov.build_definition.build_type, "no buildType"
assert prov.run_details.builder.id, "no builder id"
assert prov.run_details.metadata.invocation_id, "no invocationId"
print("ok", len(st.subject), len(prov.run_details.byproducts))
"#;

/// DSSE v1 verification with `cryptography`: argv[1] the PEM public key; stdin the envelope;
/// argv[2] == "tamper" flips one byte of the payload first.
const VERIFY_ENVELOPE: &str = r#"
import base64, json, sys
from cryptography.hazmat.primitives.serialization import load_pem_public_key
env = json.load(sys.stdin)
key = load_pem_public_key(open(sys.argv[1], "rb").read())
payload = bytearray(base64.b64decode(env["payload"]))
if sys.argv[2] == "tamper":
    payload[len(payload) // 2] ^= 0x01
t = env["payloadType"].encode()
pae = b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), bytes(payload))
key.verify(base64.b64decode(env["signatures"][0]["sig"]), pae)
print("verified")
"#;

fn python(script: &str, args: &[&str], stdin: &[u8]) -> std::process::Output {
    Cmd::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(stdin.to_vec())
        .timeout(Duration::from_secs(60))
        .output()
        .expect("running python3")
}

fn sha256_hex(bytes: &[u8]) -> String {
    let out = Cmd::new("sha256sum").stdin(bytes.to_vec()).run();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn files(contents: &Value) -> Vec<&Value> {
    contents["layers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["files"].as_array().unwrap())
        .collect()
}

/// The first record of `kind` for `build_id` (with `extra` true), or a panic naming both.
fn record_of(
    sensor: &SensorProcess,
    kind: &str,
    build_id: &str,
    extra: impl Fn(&Value) -> bool,
) -> Value {
    sensor
        .wait_for(
            |r| r["kind"] == kind && r["build_id"] == build_id && extra(r),
            WAIT,
        )
        .unwrap_or_else(|e| {
            let near = nearest(&sensor.records(), kind, &[("build_id", eq(build_id))]);
            panic!("no {kind} for {build_id}: {e:#}\n{near}")
        })
}

fn statement_is_strictly_valid(statement: &Value) {
    let out = python(VALIDATE_STATEMENT, &[], statement.to_string().as_bytes());
    assert!(
        out.status.success(),
        "in-toto-attestation rejects the statement: {}\n{statement:#}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Who builds the image.
#[derive(Clone, Copy, PartialEq)]
enum Via {
    Docker(Builder),
    /// `buildah bud`, on containers-storage (which commits all RUNs of a stage into one layer).
    Buildah,
    /// `podman build`, on the same store (a layer per RUN).
    Podman,
}

/// Builds `ctx` as a fresh tag from `name`, the image removed when the scenario ends; returns
/// the tag and the image id (`sha256:...`).
fn build(sc: &Scenario, via: Via, ctx: &BuildContext, name: &str) -> (String, String) {
    let tag = unique_tag(name);
    let id = match via {
        Via::Docker(builder) => {
            sc.image(&tag);
            ctx.build(&tag, builder);
            sc.image_id(&tag)
        }
        Via::Buildah | Via::Podman => {
            let tool = if via == Via::Buildah {
                "buildah"
            } else {
                "podman"
            };
            sc.storage_image(tool, &tag);
            // Host network: the step reaches the test host through this host's routes (as in
            // tests/tests/builds_buildah_podman.rs).
            storage_build(tool, ctx.path(), &tag, &["--network", "host"])
        }
    };
    (tag, id)
}

fn build_with_download(via: Via, name: &str) {
    let sc = Scenario::new("running the sensor, dockerd and a test host");
    let on_storage = matches!(via, Via::Buildah | Via::Podman);
    let from = if on_storage {
        storage_base(BASE)
    } else {
        BASE.to_string()
    };
    let host = sc.host("prov");
    host.serve_http(8091, &[("tool", TOOL)]);
    let key = sc.path("key.pem");
    let public = sc.path("key.pub.pem");
    run(
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "ed25519",
            "-out",
            key.to_str().unwrap(),
        ],
    );
    run(
        "openssl",
        &[
            "pkey",
            "-in",
            key.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ],
    );
    let state_dir = sc.path("state");
    let mut sensor = sc.start_sensor(&[
        "--stats-interval",
        "0",
        "--state-dir",
        state_dir.to_str().unwrap(),
        "--provenance-key",
        key.to_str().unwrap(),
    ]);

    let url = host.url(8091, "tool");
    let ctx = BuildContext::new(&format!(
        "FROM {from}\nRUN wget -q -O /usr/bin/fetched-tool {url} && chmod +x /usr/bin/fetched-tool && /usr/bin/fetched-tool && rm /etc/group\nRUN echo data > /data.txt\n"
    ));
    let (tag, id) = build(&sc, via, &ctx, name);
    let finished = build_record(&sensor, "build_finished", &tag, WAIT);
    let build_id = finished["build_id"].as_str().unwrap().to_string();
    let contents = record_of(&sensor, "image_contents", &build_id, |_| true);
    eprintln!("{contents}");
    assert_eq!(contents["image_id"], id.as_str());
    assert!(contents.get("error").is_none(), "{contents}");
    assert!(contents["base_layers"].as_u64().unwrap() >= 1, "{contents}");
    if on_storage {
        assert_eq!(contents["storage"], "containers-storage");
    } else {
        assert_eq!(contents["storage"], "docker");
    }
    if via == Via::Buildah {
        // One layer for both RUNs, made by step 2 and holding step 1's changes.
        assert_eq!(
            contents["layers"].as_array().unwrap().len(),
            1,
            "{contents}"
        );
        assert_eq!(contents["layers"][0]["steps"], serde_json::json!([1, 2]));
    } else {
        // Only the build's two RUN layers, not the base's.
        assert_eq!(
            contents["layers"].as_array().unwrap().len(),
            2,
            "{contents}"
        );
        assert_eq!(contents["layers"][0]["step"], 1, "{contents}");
    }

    let all = files(&contents);
    let tool = all
        .iter()
        .find(|f| f["path"] == "/usr/bin/fetched-tool")
        .unwrap_or_else(|| panic!("no /usr/bin/fetched-tool in {contents}"));
    assert_eq!(tool["sha256"], sha256_hex(TOOL).as_str(), "{tool}");
    assert_eq!(tool["size"], TOOL.len() as u64);
    assert_eq!(tool["op"], "added");
    assert_eq!(tool["type"], "file");
    assert_eq!(tool["executable"], true);
    assert_eq!(tool["outside_policy"], true);
    assert_eq!(tool["fetched_from"]["url"], url.as_str(), "{tool}");
    assert_eq!(tool["fetched_from"]["dst_addr"], host.ip().to_string());
    assert_eq!(tool["fetched_from"]["dst_port"], 8091);
    assert_eq!(tool["fetched_from"]["policy"], "unknown");
    let group = all
        .iter()
        .find(|f| f["path"] == "/etc/group")
        .unwrap_or_else(|| panic!("no whiteout for /etc/group in {contents}"));
    assert_eq!(group["op"], "deleted", "{group}");
    let data = all.iter().find(|f| f["path"] == "/data.txt").unwrap();
    assert_eq!(data["sha256"], sha256_hex(b"data\n").as_str());
    assert!(data.get("executable").is_none() && data.get("fetched_from").is_none());

    let finding = record_of(&sensor, "finding", &build_id, |r| {
        r["rule"] == "build_downloaded_executable"
    });
    assert_eq!(finding["attack"][0], "T1612");
    assert_eq!(finding["analytics"][0], "AN1261");
    assert_eq!(
        finding["details"]["files"][0]["path"],
        "/usr/bin/fetched-tool"
    );
    assert_eq!(
        finding["details"]["files"][0]["source"]["url"],
        url.as_str()
    );
    assert!(
        finding["summary"]
            .as_str()
            .unwrap()
            .contains(&sha256_hex(TOOL))
    );

    let prov = record_of(&sensor, "image_provenance", &build_id, |_| true);
    let st = &prov["statement"];
    assert_eq!(st["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(
        st["subject"][0]["digest"]["sha256"],
        id.trim_start_matches("sha256:")
    );
    assert!(
        st["subject"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == tag.as_str())
    );
    let p = &st["predicate"];
    assert_eq!(
        p["runDetails"]["metadata"]["invocationId"],
        build_id.as_str()
    );
    let ext = &p["buildDefinition"]["externalParameters"];
    assert_eq!(
        ext["dockerfile"]["digest"]["sha256"],
        sha256_hex(
            std::fs::read(ctx.path().join("Dockerfile"))
                .unwrap()
                .as_slice()
        )
        .as_str(),
        "{ext}"
    );
    let deps = p["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .unwrap();
    assert!(deps.iter().any(|d| d["uri"] == url.as_str()), "{deps:?}");
    // BuildKit names the base fully qualified (docker.io/library/localbase:1).
    let base_id = sc.image_id(BASE);
    assert!(
        deps.iter()
            .any(|d| d["name"].as_str().is_some_and(|n| n.ends_with(BASE))
                && d["digest"]["sha256"] == base_id.trim_start_matches("sha256:")),
        "{deps:?}"
    );
    let byproducts = p["runDetails"]["byproducts"].as_array().unwrap();
    assert!(
        byproducts
            .iter()
            .any(|b| b["name"] == "/usr/bin/fetched-tool"
                && b["digest"]["sha256"] == sha256_hex(TOOL).as_str())
    );
    statement_is_strictly_valid(st);

    // The DSSE envelope verifies with a standard library, and not after one byte changes.
    let env = prov["envelope"].to_string();
    let ok = python(
        VERIFY_ENVELOPE,
        &[public.to_str().unwrap(), "as-is"],
        env.as_bytes(),
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = python(
        VERIFY_ENVELOPE,
        &[public.to_str().unwrap(), "tamper"],
        env.as_bytes(),
    );
    assert!(!bad.status.success(), "a tampered payload verified");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("InvalidSignature"));

    // Kept in the state directory and printed by `sensor provenance`.
    assert!(Path::new(prov["stored"].as_str().unwrap()).is_file());
    let printed = Cmd::new(sensor_bin())
        .args([
            "provenance",
            &tag,
            "--state-dir",
            state_dir.to_str().unwrap(),
        ])
        .run();
    let printed: Value = serde_json::from_slice(&printed.stdout).unwrap();
    assert_eq!(&printed, st);
    let verified = Cmd::new(sensor_bin())
        .args([
            "provenance",
            &id,
            "--verify",
            "--public-key",
            public.to_str().unwrap(),
            "--state-dir",
            state_dir.to_str().unwrap(),
        ])
        .run();
    assert!(String::from_utf8_lossy(&verified.stdout).starts_with("verified: "));

    assert!(sensor.stop().unwrap().success());
    let records = sensor.records();
    for r in records.iter().filter(|r| r["kind"] == "image_provenance") {
        statement_is_strictly_valid(&r["statement"]);
    }
    assert_records_match_schema(&records);
}

#[test]
fn legacy_build_contents_provenance_and_finding() {
    build_with_download(Via::Docker(Builder::Legacy), "prov-legacy");
}

#[test]
fn buildkit_build_contents_provenance_and_finding() {
    build_with_download(Via::Docker(Builder::BuildKit), "prov-buildkit");
}

#[test]
fn buildah_build_contents_provenance_and_finding() {
    build_with_download(Via::Buildah, "prov-buildah");
}

#[test]
fn podman_build_contents_provenance_and_finding() {
    build_with_download(Via::Podman, "prov-podman");
}
