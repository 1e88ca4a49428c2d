//! The engine over streams recorded live with `sensor run --raw` (tests/fixtures/builds-*.ndjson).
use std::path::PathBuf;

use super::replay::replay_records;
use super::*;
use crate::output::record::BuildFinished;
use crate::process::redact::REDACTED;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

pub(super) fn replay_file(path: &std::path::Path) -> Vec<Record> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (records, _) = replay::read_records(std::io::BufReader::new(f)).unwrap();
    let mut t = BuildTracker::new(BuildConfig::default());
    replay_records(records, &mut [&mut t])
}

fn finished(recs: &[Record]) -> Vec<&BuildFinished> {
    recs.iter()
        .filter_map(|r| {
            if let Body::BuildFinished(b) = &r.body {
                Some(b)
            } else {
                None
            }
        })
        .collect()
}

/// `SENSOR_REPLAY=file cargo test -p sensor --bin sensor print_replay -- --ignored --nocapture`
#[test]
#[ignore]
fn print_replay() {
    let path = std::env::var("SENSOR_REPLAY").unwrap();
    for r in replay_file(std::path::Path::new(&path)) {
        println!("{}", serde_json::to_string(&r).unwrap());
    }
}

fn one_build(name: &str) -> BuildFinished {
    let recs = replay_file(&fixture(name));
    let started: Vec<_> = recs
        .iter()
        .filter(|r| r.body.kind() == "build_started")
        .collect();
    let f = finished(&recs);
    assert_eq!(
        (started.len(), f.len()),
        (1, 1),
        "{name}: one build expected"
    );
    f[0].clone()
}

const NC: &str =
    "/bin/sh -c printf \"GET /payload HTTP/1.0\\r\\n\\r\\n\" | nc -w 3 10.251.0.2 8080";

fn assert_ok_build(f: &BuildFinished, builder: &str, tag: &str, image: &str, exe: &str) {
    assert_eq!(f.builder, builder);
    assert_eq!(f.status, "succeeded");
    assert!(!f.partial);
    assert_eq!(f.tags, vec![tag]);
    assert_eq!(f.image_id.as_deref(), Some(image));
    assert_eq!(f.client.transport, "unix");
    assert!(f.client.pid.is_some());
    assert_eq!(f.client.exe.as_deref(), Some(exe));
    let steps: Vec<(&str, Option<i32>)> = f
        .steps
        .iter()
        .map(|s| (s.command.as_str(), s.exit_code))
        .collect();
    assert_eq!(
        steps,
        [(NC, Some(0)), ("/bin/sh -c echo done > /done", Some(0))]
    );
    assert!(
        f.steps
            .iter()
            .all(|s| s.attribution.as_deref() == Some("response"))
    );
    assert_eq!(f.outbound.len(), 1, "{:?}", f.outbound);
    let o = &f.outbound[0];
    assert_eq!(
        (o.dst_addr.as_str(), o.dst_port, o.made_by.as_str()),
        ("10.251.0.2", 8080, "1")
    );
    assert!(
        f.base_images
            .iter()
            .any(|b| b.reference.ends_with("localbase:1"))
    );
}

#[test]
fn recorded_buildkit_build() {
    let f = one_build("builds-buildkit.ndjson");
    assert_ok_build(
        &f,
        "buildkit",
        "fx-bk:1",
        "sha256:065cd681a6faab77ca0e4f76e331fc5c15d33a7844db4884c43b7982e76882ac",
        "/usr/bin/docker",
    );
    assert_eq!(
        f.steps[1].instruction.as_deref(),
        Some("[3/3] RUN echo done > /done")
    );
}

#[test]
fn recorded_legacy_build() {
    let f = one_build("builds-legacy.ndjson");
    assert_ok_build(
        &f,
        "legacy",
        "fx-legacy:1",
        "sha256:b60f47a3c3eda9c9f21a559f315de49aee6481991dd55d8ae28c2c767f7798e7",
        "/usr/bin/docker",
    );
    assert_eq!(f.base_images[0].image_id.as_deref(), Some("bb7d97d85cab"));
    assert!(
        f.steps
            .iter()
            .all(|s| s.container_id.as_ref().is_some_and(|c| c.len() == 64))
    );
}

#[test]
fn recorded_curl_post_build() {
    let f = one_build("builds-curl.ndjson");
    assert_ok_build(
        &f,
        "legacy",
        "fx-curl:1",
        "sha256:7c397ef6b4e5932fcb444bdc8ea1fd442ff7edd144fdf9382fd49b02fc890691",
        "/usr/bin/curl",
    );
    assert!(
        f.user_agent
            .as_deref()
            .is_some_and(|u| u.starts_with("curl/"))
    );
    assert_eq!(
        f.params.build_args.get("TOKEN").map(String::as_str),
        Some(REDACTED)
    );
    assert!(f.params.context_upload && f.params.no_cache);
}

#[test]
fn recorded_failed_builds() {
    for (name, builder) in [
        ("builds-legacy-failed.ndjson", "legacy"),
        ("builds-buildkit-failed.ndjson", "buildkit"),
    ] {
        let f = one_build(name);
        assert_eq!(f.builder, builder);
        assert_eq!(f.status, "failed", "{name}");
        assert_eq!(f.failed_step, Some(2), "{name}");
        assert_eq!(f.steps[1].command, "/bin/sh -c exit 3");
        assert_eq!(f.steps[1].exit_code, Some(3));
        assert_eq!(f.steps[0].exit_code, Some(0));
        assert!(
            f.error.as_deref().is_some_and(|e| e.contains("exit 3")),
            "{name}: {:?}",
            f.error
        );
        assert!(f.image_id.is_none() && f.tags.is_empty());
    }
}

#[test]
fn replay_is_deterministic() {
    let a = replay_file(&fixture("builds-legacy.ndjson"));
    let b = replay_file(&fixture("builds-legacy.ndjson"));
    assert_eq!(a, b);
}

/// Two quiet BuildKit builds at once (`docker build -q` twice, recorded live): no progress
/// stream to match RUN text against. Each step started while both were open, so neither may
/// take it when the other ends first: both are counted, none is given to the wrong build.
#[test]
fn overlapping_quiet_buildkit_builds_leave_steps_unattributed() {
    let path = fixture("builds-buildkit-quiet-overlap.ndjson");
    let f = std::fs::File::open(&path).unwrap();
    let (records, _) = replay::read_records(std::io::BufReader::new(f)).unwrap();
    let mut t = BuildTracker::new(BuildConfig::default());
    let recs = replay_records(records, &mut [&mut t]);
    let f = finished(&recs);
    assert_eq!(f.len(), 2, "two builds expected");
    for b in &f {
        assert_eq!(b.status, "succeeded", "{b:?}");
        assert!(b.params.quiet);
        assert!(
            b.steps.is_empty(),
            "a step given to a build by elimination: {b:?}"
        );
    }
    let mut drops = BTreeMap::new();
    t.drops(&mut drops);
    assert_eq!(drops["steps_unattributed"], 2);
}
