//! The lineage engine over hand-made records and a fake host disk (a temporary host root).
use std::sync::{Arc, Mutex};

use super::*;
use crate::detect::testutil::*;
use crate::lineage::containerd::{ContainerImage, ContainerdLink};
use crate::lineage::store::LineageStore;
use crate::output::record::{OutboundConnection, ProcessExec, ProcessRef};
use crate::process::host::tests::fake_docker;

/// One record through the engine as the pipeline passes it: commit, then observe.
fn feed(e: &mut LineageEngine, r: &Record, out: &mut Vec<Body>) {
    e.commit(r);
    e.observe(r, out);
}

fn engine(paths: HostPaths) -> (LineageEngine, SharedLineage) {
    let store = Arc::new(Mutex::new(LineageStore::in_memory(100, 30)));
    (LineageEngine::new(paths, store.clone()), store)
}

fn runc_create(id: &str) -> Body {
    let b = format!("/run/containerd/io.containerd.runtime.v2.task/moby/{id}");
    Body::ProcessExec(ProcessExec {
        process: ProcessRef {
            pid: 77,
            comm: "runc".into(),
            role: "descendant".into(),
            ..Default::default()
        },
        filename: "/usr/sbin/runc".into(),
        argv: [
            "runc",
            "--root",
            "/var/run/docker/runtime-runc/moby",
            "create",
            "--bundle",
            &b,
            id,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        argv_truncated: false,
        start_time_ns: 5,
    })
}

#[test]
fn container_start_links_build_and_survives_unasked_starts() {
    let id = "b".repeat(64);
    let paths = fake_docker("lin1", &id, "web", "sha256:img1", "evil:1");
    let (mut e, store) = engine(paths.clone());
    let mut out = Vec::new();
    let mut bf = build_finished("B1", Some("sha256:img1"), &[("192.0.2.9", 8080, "unknown")]);
    if let Body::BuildFinished(b) = &mut bf {
        b.outbound.push(OutboundConnection {
            policy: "allowed".into(),
            ..b.outbound[0].clone()
        });
    }
    feed(&mut e, &rec(10, 100, bf), &mut out);
    assert_eq!(
        store
            .lock()
            .unwrap()
            .get("sha256:img1")
            .unwrap()
            .outbound_not_allowed
            .len(),
        1
    );
    // A runtime create nobody asked for (a legacy build step): nothing.
    feed(&mut e, &rec(11, 101, runc_create(&id)), &mut out);
    assert!(out.is_empty());
    feed(
        &mut e,
        &rec(
            12,
            130,
            api_post(&format!("/containers/{id}/start"), None, unix_client(0)),
        ),
        &mut out,
    );
    feed(&mut e, &rec(13, 130, runc_create(&id)), &mut out);
    let Body::ContainerStart(c) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(c.build_id.as_deref(), Some("B1"));
    assert_eq!(c.seconds_since_build, Some(30));
    assert_eq!(c.name.as_deref(), Some("web"));
    assert_eq!(c.image, "evil:1");
    assert_eq!(c.runtime, "docker");
    assert_eq!(c.client.uid, Some(0));
    assert_eq!(c.evidence.record_ids, vec![12, 13]);
    std::fs::remove_dir_all(&paths.host_root).unwrap();
}

/// Writes an image config (and its tag) into the fake store.
fn add_image(paths: &HostPaths, hex: &str, created: &str, tag: &str, digest: Option<&str>) {
    let img = paths.host_root.join("var/lib/docker/image/overlay2");
    let content = img.join("imagedb/content/sha256");
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(
        content.join(hex),
        serde_json::json!({"created": created, "history": [
            {"created": created, "comment": "Imported from -"},
            {"created": created, "created_by": "/bin/sh -c wget -q http://x/p"}]})
        .to_string(),
    )
    .unwrap();
    let repos_path = img.join("repositories.json");
    let mut repos: Value = serde_json::from_slice(&std::fs::read(&repos_path).unwrap()).unwrap();
    let repo = tag.split(':').next().unwrap().to_string();
    let id = format!("sha256:{hex}");
    repos["Repositories"][&repo][tag] = Value::String(id.clone());
    if let Some(d) = digest {
        repos["Repositories"][&repo][format!("{repo}@{d}")] = Value::String(id);
    }
    std::fs::write(&repos_path, repos.to_string()).unwrap();
}

/// A store on disk whose previous run watched until 22:10 (`ts(-200)`; `ts(0)` is
/// 2023-11-14T22:13:20Z), and its directory.
fn store_seen_until(name: &str) -> (std::path::PathBuf, SharedLineage) {
    let dir = std::env::temp_dir().join(format!("sensor-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut first = LineageStore::open(&dir, 10, 3650, ts(0)).unwrap();
    first.mark_alive(ts(-200));
    drop(first);
    let store = LineageStore::open(&dir, 10, 3650, ts(0)).unwrap();
    (dir, Arc::new(Mutex::new(store)))
}

fn sensor_started() -> Body {
    Body::SensorStarted(crate::output::record::SensorStarted {
        version: "t".into(),
        kernel: "t".into(),
        probes: vec![],
        probes_failed: Default::default(),
        probes_unused: Default::default(),
        kernel_hooks: "socket".into(),
        file_events: "fanotify".into(),
        dns_events: "socket".into(),
        seeded_processes: 0,
        runtime_names: vec![],
        raw: false,
    })
}

#[test]
fn images_made_while_stopped_are_discovered_and_unexplained() {
    let id = "e".repeat(64);
    let paths = fake_docker("lin-rec", &id, "web", "sha256:old", "old:1");
    let (old, new, pulled) = ("1".repeat(64), "2".repeat(64), "3".repeat(64));
    add_image(&paths, &old, "2023-11-14T22:00:00Z", "old:1", None);
    add_image(&paths, &new, "2023-11-14T22:20:00Z", "made:1", None);
    add_image(
        &paths,
        &pulled,
        "2023-11-14T22:21:00Z",
        "pulled:1",
        Some("sha256:dd"),
    );
    let (dir, store) = store_seen_until("lin-rec");
    let mut e = LineageEngine::new(paths.clone(), store);
    let mut out = Vec::new();
    let started = sensor_started();
    feed(&mut e, &rec(1, 0, started.clone()), &mut out);
    let found: Vec<&ImageDiscovered> = out
        .iter()
        .filter_map(|b| match b {
            Body::ImageDiscovered(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(found.len(), 2, "{out:?}");
    assert_eq!(found[0].image_id, format!("sha256:{new}"));
    assert_eq!(found[0].tags, ["made:1"]);
    assert_eq!(found[0].history[1], "/bin/sh -c wget -q http://x/p");
    assert!(found[0].repo_digests.is_empty());
    assert_eq!(found[1].repo_digests, ["sha256:dd"]);
    // Once per run.
    out.clear();
    feed(&mut e, &rec(2, 1, started), &mut out);
    assert!(out.is_empty());
    assert_eq!(
        e.image_origin(Some(&format!("sha256:{new}")), false)
            .as_deref(),
        Some("unexplained")
    );
    assert_eq!(
        e.image_origin(Some(&format!("sha256:{pulled}")), false)
            .as_deref(),
        Some("registry")
    );
    assert_eq!(e.image_origin(None, true).as_deref(), Some("built_here"));
    std::fs::remove_dir_all(&paths.host_root).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn container_start_fallback_from_disk_by_name() {
    let id = "d".repeat(64);
    let paths = fake_docker("lin2", &id, "web2", "sha256:img2", "x:2");
    let (mut e, _) = engine(paths.clone());
    let mut out = Vec::new();
    feed(
        &mut e,
        &rec(
            1,
            100,
            api_post("/containers/web2/start", None, unix_client(0)),
        ),
        &mut out,
    );
    e.tick(ts(101), &mut out);
    assert!(out.is_empty());
    // config.v2.json says Running with a StartedAt long ago: not this request's start.
    e.tick(ts(103), &mut out);
    assert!(out.is_empty());
    std::fs::remove_dir_all(&paths.host_root).unwrap();
}

#[test]
fn image_push_with_digest_and_build() {
    let (mut e, store) = engine(HostPaths {
        host_root: "/nonexistent".into(),
        ..Default::default()
    });
    let mut out = Vec::new();
    let mut bf = build_finished("B2", Some("sha256:img3"), &[]);
    if let Body::BuildFinished(b) = &mut bf {
        b.tags = vec!["localhost:5000/app:1".into()];
    }
    feed(&mut e, &rec(1, 100, bf), &mut out);
    feed(
        &mut e,
        &rec(
            2,
            110,
            api_post(
                "/images/localhost:5000/app/push",
                Some("tag=1"),
                unix_client(1000),
            ),
        ),
        &mut out,
    );
    let data = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n5b\r\n{\"status\":\"1: digest: sha256:dd size: 527\"}\r\n{\"progressDetail\":{},\"aux\":{\"Tag\":\"1\",\"Digest\":\"sha256:dd\",\"Size\":527}}\r\n";
    feed(&mut e, &rec(3, 111, api_response(data)), &mut out);
    let Body::ImagePush(p) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(p.reference, "localhost:5000/app:1");
    assert_eq!(p.registry, "localhost:5000");
    assert_eq!(p.digest.as_deref(), Some("sha256:dd"));
    assert_eq!(p.build_id.as_deref(), Some("B2"));
    assert_eq!(p.image_id.as_deref(), Some("sha256:img3"));
    // Fed back with its id, the push is remembered.
    let pushed = out.remove(0);
    feed(&mut e, &rec(4, 111, pushed), &mut out);
    assert_eq!(
        store.lock().unwrap().get("sha256:img3").unwrap().pushes[0].record_id,
        4
    );
    assert_eq!(
        store.lock().unwrap().get("sha256:img3").unwrap().digests,
        vec!["sha256:dd".to_string()]
    );
}

#[test]
fn push_without_response_stream_is_confirmed_by_a_new_digest_on_disk() {
    let id = "b".repeat(64);
    let p = fake_docker("pushdisk", &id, "c", "sha256:img4", "127.0.0.1:5000/app:1");
    let (mut e, _) = engine(p.clone());
    let mut out = Vec::new();
    feed(
        &mut e,
        &rec(
            2,
            110,
            api_post(
                "/images/127.0.0.1:5000/app/push",
                Some("tag=1"),
                unix_client(0),
            ),
        ),
        &mut out,
    );
    e.tick(ts(111), &mut out);
    assert!(out.is_empty(), "{out:?}");
    // dockerd adds `name@digest` when the push succeeds.
    let repos = p
        .host_root
        .join("var/lib/docker/image/overlay2/repositories.json");
    std::fs::write(
        &repos,
        serde_json::json!({"Repositories": {"127.0.0.1:5000/app": {
            "127.0.0.1:5000/app:1": "sha256:img4", "127.0.0.1:5000/app@sha256:d4": "sha256:img4"}}})
        .to_string(),
    )
    .unwrap();
    e.tick(ts(113), &mut out);
    let Body::ImagePush(push) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(push.reference, "127.0.0.1:5000/app:1");
    assert_eq!(push.digest.as_deref(), Some("sha256:d4"));
    assert_eq!(push.registry, "127.0.0.1:5000");
    assert_eq!(push.image_id.as_deref(), Some("sha256:img4"));
    e.tick(ts(300), &mut out);
    assert_eq!(out.len(), 1, "reported twice: {out:?}");
    std::fs::remove_dir_all(&p.host_root).unwrap();
}

#[test]
fn failed_push_is_not_reported() {
    let (mut e, _) = engine(HostPaths {
        host_root: "/nonexistent".into(),
        ..Default::default()
    });
    let mut out = Vec::new();
    feed(
        &mut e,
        &rec(
            2,
            110,
            api_post(
                "/images/reg.example/app/push",
                Some("tag=1"),
                unix_client(0),
            ),
        ),
        &mut out,
    );
    feed(
        &mut e,
        &rec(
            3,
            111,
            api_response("{\"errorDetail\":{\"message\":\"no route\"},\"error\":\"no route\"}\n"),
        ),
        &mut out,
    );
    e.tick(ts(2000), &mut out);
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn registry_names() {
    assert_eq!(registry_of("alpine"), "docker.io");
    assert_eq!(registry_of("me/app"), "docker.io");
    assert_eq!(registry_of("localhost/app"), "localhost");
    assert_eq!(registry_of("ghcr.io/me/app"), "ghcr.io");
}

/// containerd's scan comes after the start's reconciliation: its images are reported when it
/// arrives, except those dockerd's store holds too (the containerd snapshotter: one image, two
/// stores), those the lineage store knows, and the same image met through a second socket.
#[test]
fn containerd_images_are_reported_when_the_scan_comes_and_once() {
    let id = "f".repeat(64);
    let paths = fake_docker("lin-ctrd", &id, "web", "sha256:old", "old:1");
    let (in_docker, built, new) = ("4".repeat(64), "5".repeat(64), "6".repeat(64));
    add_image(&paths, &in_docker, "2023-11-14T21:00:00Z", "dock:1", None);
    let (dir, store) = store_seen_until("lin-ctrd");
    let (link, tx, _asks, _answers) = ContainerdLink::pair();
    let mut e = LineageEngine::new(paths.clone(), store).with_containerd(Some(link));
    let mut out = Vec::new();
    feed(
        &mut e,
        &rec(
            1,
            0,
            build_finished("B1", Some(&format!("sha256:{built}")), &[]),
        ),
        &mut out,
    );
    feed(&mut e, &rec(2, 0, sensor_started()), &mut out);
    assert!(out.is_empty(), "{out:?}");
    e.tick(ts(1), &mut out);
    assert!(out.is_empty(), "{out:?}");
    let img = |hex: &str, ns: &str| ContainerdImage {
        namespace: ns.into(),
        image_id: format!("sha256:{hex}"),
        created: ts(-10),
        tags: vec![format!("docker.io/library/{hex}:1")],
        repo_digests: vec![],
        history: vec!["ADD file in /".into()],
    };
    tx.send(crate::lineage::containerd::Scan {
        images: vec![
            img(&in_docker, "moby"),
            img(&built, "default"),
            img(&new, "k8s.io"),
            img(&new, "k8s.io"),
        ],
        failed: 1,
    })
    .unwrap();
    e.tick(ts(2), &mut out);
    let [Body::ImageDiscovered(d)] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(d.image_id, format!("sha256:{new}"));
    assert_eq!(d.runtime, "containerd");
    assert_eq!(d.namespace.as_deref(), Some("k8s.io"));
    assert_eq!(d.seen_until, Some(ts(-200)));
    assert_eq!(d.history, ["ADD file in /"]);
    let mut drops = BTreeMap::new();
    e.drops(&mut drops);
    assert_eq!(drops["containerd_store_unreadable"], 1);
    out.clear();
    e.tick(ts(3), &mut out);
    assert!(out.is_empty());
    std::fs::remove_dir_all(&paths.host_root).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

fn runc_create_in(ns: &str, id: &str) -> Body {
    let mut b = runc_create(id);
    if let Body::ProcessExec(e) = &mut b {
        let bundle =
            format!("/var/run/docker/containerd/daemon/io.containerd.runtime.v2.task/{ns}/{id}");
        e.argv[5] = bundle;
    }
    b
}

/// A container containerd starts itself (`ctr run`): the record waits for containerd to say
/// its image; made on this host and explained by no build, it is `unexplained`; pulled, it is
/// `registry`; with no answer within a few seconds it is reported without.
#[test]
fn containerd_starts_take_their_image_from_containerd() {
    let paths = fake_docker("lin-ctrd-start", &"0".repeat(64), "x", "sha256:x", "x:1");
    let (mut e, _) = engine(paths.clone());
    let (link, _scan, mut asks, answers) = ContainerdLink::pair();
    e = e.with_containerd(Some(link));
    let (made, pulled, silent) = ("a1".repeat(32), "a2".repeat(32), "a3".repeat(32));
    let mut out = Vec::new();
    for (i, id) in [&made, &pulled, &silent].into_iter().enumerate() {
        feed(
            &mut e,
            &rec(i as u64 + 1, 100, runc_create_in("t-ns", id)),
            &mut out,
        );
        let q = asks.try_recv().unwrap();
        assert_eq!(
            (q.namespace.as_str(), q.container_id.as_str()),
            ("t-ns", id.as_str())
        );
    }
    assert!(out.is_empty(), "{out:?}");
    // A second create of a waiting container: neither asked again nor reported twice.
    feed(
        &mut e,
        &rec(9, 100, runc_create_in("t-ns", &made)),
        &mut out,
    );
    assert!(asks.try_recv().is_err());
    assert!(out.is_empty(), "{out:?}");
    for (id, from_registry) in [(&made, false), (&pulled, true)] {
        answers
            .send(ContainerImage {
                namespace: "t-ns".into(),
                container_id: id.clone(),
                image: Some(format!("docker.io/library/{}:1", &id[..4])),
                image_id: Some(format!("sha256:{}", "c".repeat(64))),
                from_registry,
            })
            .unwrap();
    }
    e.tick(ts(101), &mut out);
    let starts: Vec<&ContainerStart> = out
        .iter()
        .filter_map(|b| match b {
            Body::ContainerStart(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(starts.len(), 2, "{out:?}");
    assert_eq!(starts[0].container_id, made);
    assert_eq!(starts[0].runtime, "containerd");
    assert_eq!(starts[0].image, "docker.io/library/a1a1:1");
    assert_eq!(
        starts[0].image_id,
        Some(format!("sha256:{}", "c".repeat(64)))
    );
    assert_eq!(starts[0].image_origin.as_deref(), Some("unexplained"));
    assert_eq!(starts[0].evidence.record_ids, [1]);
    assert_eq!(starts[1].image_origin.as_deref(), Some("registry"));
    out.clear();
    e.tick(ts(103), &mut out);
    assert!(out.is_empty(), "{out:?}");
    e.tick(ts(106), &mut out);
    let [Body::ContainerStart(c)] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(c.container_id, silent);
    assert_eq!(c.image, "unknown");
    assert_eq!(c.image_origin, None);
    std::fs::remove_dir_all(&paths.host_root).unwrap();
}
