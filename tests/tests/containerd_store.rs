//! containerd's own image store, live: an image put into a containerd namespace (the real
//! `ctr images import`, then `ctr images tag`) while the sensor is stopped is reported when it
//! starts again (`image_discovered`, runtime `containerd`, with the namespace, tags, created
//! time and the image's config digest as its id), read through containerd's gRPC API; one
//! imported before the previous run's last moment is not. A container containerd then starts
//! itself from it (`ctr run`) is `image_origin: unexplained` and raises
//! `container_from_unexplained_image`; one containerd pulled from a registry (the test's own,
//! on loopback) is `registry` and raises nothing.
//!
//! The containerd is the one the tests' dockerd runs (or the system's, where dockerd uses
//! that): the sensor finds it among its default sockets. The namespace is the test's own, and
//! removed at the end.
//!
//! Run as root after `cargo build --release -p sensor`:
//! `cargo test -p sensor-tests --test containerd_store -- --test-threads=1`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sensor_tests::*;

const WAIT: Duration = Duration::from_secs(60);
const CTR: &str = "/usr/bin/ctr";
/// The sensor's default sockets (lineage/containerd.rs), in its order.
const SOCKETS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/var/run/docker/containerd/containerd.sock",
];

/// A containerd namespace of the test's own: its images removed, then the namespace, on drop
/// (also when the test fails).
struct Namespace {
    socket: String,
    name: String,
}

impl Namespace {
    fn ctr(&self, args: &[&str]) -> std::process::Output {
        Cmd::new(CTR)
            .args(["-a", &self.socket, "-n", &self.name])
            .args(args)
            .timeout(Duration::from_secs(120))
            .run()
    }

    fn ctr_out(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.ctr(args).stdout).to_string()
    }

    /// `ctr images ls`: name → target digest.
    fn images(&self) -> Vec<(String, String)> {
        self.ctr_out(&["images", "ls"])
            .lines()
            .skip(1)
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                Some((cols.first()?.to_string(), cols.get(2)?.to_string()))
            })
            .collect()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // try_run throughout: a panic here while the test unwinds would abort the run.
        let ctr = |args: &[&str]| {
            Cmd::new(CTR)
                .args(["-a", &self.socket, "-n", &self.name])
                .args(args)
                .timeout(Duration::from_secs(120))
                .try_run()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default()
        };
        // A container a failed `ctr run` left, then the images (and with them, once gc has
        // run, their content and snapshots), then the namespace.
        for c in ctr(&["containers", "ls", "-q"]).split_whitespace() {
            ctr(&["tasks", "kill", "-s", "SIGKILL", c]);
            ctr(&["tasks", "rm", "-f", c]);
            ctr(&["containers", "rm", c]);
        }
        let images = ctr(&["images", "ls", "-q"]);
        let names: Vec<&str> = images.split_whitespace().collect();
        if !names.is_empty() {
            let mut args = vec!["images", "rm", "--sync"];
            args.extend(names);
            ctr(&args);
        }
        let _ = Cmd::new(CTR)
            .args(["-a", &self.socket, "namespaces", "rm", &self.name])
            .timeout(Duration::from_secs(60))
            .try_run();
    }
}

/// The first default socket a containerd answers on.
fn containerd_socket() -> String {
    SOCKETS
        .iter()
        .find(|s| {
            Path::new(s).exists()
                && Cmd::new(CTR)
                    .args(["-a", s, "version"])
                    .timeout(Duration::from_secs(10))
                    .try_run()
                    .is_ok()
        })
        .unwrap_or_else(|| panic!("no containerd answers on {SOCKETS:?}"))
        .to_string()
}

/// An image of the test's own built with dockerd, saved to a tar in `dir` and removed from
/// dockerd's store (so that only containerd holds it); returns (its id, the tar).
fn saved_image(sc: &Scenario, dir: &Path, marker: &str) -> (String, PathBuf) {
    let tag = sc.tag(marker);
    let ctx = BuildContext::new(&format!("FROM {BASE_IMAGE}\nRUN echo {marker} > /m\n"));
    let out = docker_build_quiet(ctx.path(), &tag, Builder::Legacy);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = sc.image_id(&tag);
    let tar = dir.join(format!("{marker}.tar"));
    sc.docker(&["save", "-o", &tar.to_string_lossy(), &tag]);
    sc.docker(&["rmi", &tag]);
    (id, tar)
}

fn sensor(sc: &Scenario) -> SensorProcess {
    sc.start_stateful_sensor("sensor_started,image_discovered,container_start,finding,sensor_stats")
}

/// `ctr run --rm IMAGE <unique id> true` in the namespace; the sensor's `container_start` of it.
fn ctr_run(ns: &Namespace, s: &SensorProcess, image: &str) -> serde_json::Value {
    let cid = unique_tag("ctrd-run").replace(':', "-");
    ns.ctr(&["run", "--rm", image, &cid, "true"]);
    let start = s.expect_record(
        "container_start",
        &[("container_id", eq(cid.as_str()))],
        WAIT,
    );
    eprintln!("{start}");
    start
}

/// Now as the sensor writes times (RFC 3339, nine digits, `Z`): such strings compare as times.
fn now() -> String {
    let out = Cmd::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%NZ"])
        .run();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn image_imported_into_containerd_while_stopped_is_discovered() {
    let sc = Scenario::new("running the sensor, dockerd and its containerd");
    let socket = containerd_socket();
    let ns = Namespace {
        name: unique_tag("sensor-test")
            .replace(':', "-")
            .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-"),
        socket,
    };
    let dir = tempfile::tempdir().unwrap();
    let (old_id, old_tar) = saved_image(&sc, dir.path(), "ctrd-old");
    let (new_id, new_tar) = saved_image(&sc, dir.path(), "ctrd-new");
    assert_ne!(old_id, new_id);

    // Imported before the first run stops: that run's seen_until is after it.
    ns.ctr(&[
        "images",
        "import",
        "--no-unpack",
        &old_tar.to_string_lossy(),
    ]);
    let mut first = sensor(&sc);
    first.expect_record("sensor_started", &[], WAIT);
    assert!(first.stop().unwrap().success());

    // Imported and tagged while nothing watched.
    // `--digests`: also the `name@sha256:<manifest>` image a pull makes (a repo digest).
    let before = now();
    ns.ctr(&[
        "images",
        "import",
        "--no-unpack",
        "--digests",
        &new_tar.to_string_lossy(),
    ]);
    let imported = ns.images();
    let new_name = imported
        .iter()
        .find(|(n, _)| n.contains("ctrd-new") && !n.contains('@'))
        .unwrap_or_else(|| panic!("the import named no image ctrd-new: {imported:?}"))
        .0
        .clone();
    let digest_names: Vec<&(String, String)> =
        imported.iter().filter(|(n, _)| n.contains('@')).collect();
    let extra = format!("docker.io/library/{}", unique_tag("ctrd-extra"));
    ns.ctr(&["images", "tag", &new_name, &extra]);
    let after = now();
    // What containerd says the image is: its target (a manifest) names the config, whose
    // digest is the image id (dockerd's id of the same image).
    let (_, target) = ns
        .images()
        .into_iter()
        .find(|(n, _)| *n == new_name)
        .unwrap();
    let manifest: serde_json::Value =
        serde_json::from_str(&ns.ctr_out(&["content", "get", &target])).unwrap();
    assert_eq!(manifest["config"]["digest"], new_id.as_str(), "{manifest}");

    let mut second = sensor(&sc);
    let d = second.expect_record(
        "image_discovered",
        &[("namespace", eq(ns.name.as_str()))],
        WAIT,
    );
    eprintln!("{d}");
    assert_fields(
        &d,
        &[
            ("runtime", eq("containerd")),
            ("image_id", eq(new_id.as_str())),
            ("tags", contains(new_name.as_str())),
            ("tags", contains(extra.as_str())),
            ("history", contains("/bin/sh -c echo ctrd-new > /m")),
        ],
    );
    // Each `name@digest` name is a repo digest, not a tag.
    let want: Vec<&str> = digest_names
        .iter()
        .map(|(n, _)| n.split_once('@').unwrap().1)
        .collect();
    eprintln!("digest names: {digest_names:?}");
    assert_eq!(d["repo_digests"], serde_json::json!(want), "{d}");
    assert!(
        !d["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t.as_str().unwrap().contains('@')),
        "{d}"
    );
    let created = d["created"].as_str().unwrap();
    assert!(created > d["seen_until"].as_str().unwrap(), "{d}");
    assert!(
        created >= before.as_str() && created <= after.as_str(),
        "created {created} is not within the import, {before} .. {after}"
    );
    // The one imported before the first run stopped is not reported, and the new one once.
    second.expect_no_record(
        "image_discovered",
        &[("image_id", eq(old_id.as_str()))],
        Duration::from_secs(3),
    );

    // A container containerd starts itself (not dockerd) from that image: containerd says
    // which image it is; no build explains it and no registry gave it.
    let start = ctr_run(&ns, &second, &new_name);
    let cid = start["container_id"].clone();
    assert_fields(
        &start,
        &[
            ("runtime", eq("containerd")),
            ("image", eq(new_name.as_str())),
            ("image_id", eq(new_id.as_str())),
            ("image_origin", eq("unexplained")),
            ("build_id", absent()),
        ],
    );
    let f = second.expect_record(
        "finding",
        &[
            ("rule", eq("container_from_unexplained_image")),
            ("container_id", eq(cid)),
        ],
        WAIT,
    );
    eprintln!("{f}");

    // One containerd pulled from a registry (the test's own, on loopback): `registry`, and no
    // finding.
    let registry = LocalRegistry::start();
    let pulled = format!("{}/{}", registry.host(), unique_tag("ctrd-pulled"));
    sc.image(&pulled);
    sc.docker(&["tag", BASE_IMAGE, &pulled]);
    registry.push(&pulled);
    ns.ctr(&["images", "pull", "--plain-http", &pulled]);
    let start2 = ctr_run(&ns, &second, &pulled);
    assert_fields(
        &start2,
        &[
            ("runtime", eq("containerd")),
            ("image", eq(pulled.as_str())),
            ("image_id", eq(sc.image_id(BASE_IMAGE))),
            ("image_origin", eq("registry")),
        ],
    );
    second.expect_no_record(
        "finding",
        &[("container_id", eq(start2["container_id"].clone()))],
        Duration::from_secs(3),
    );
    assert!(second.stop().unwrap().success());
    let ours: Vec<_> = second
        .records_of_kind("image_discovered")
        .into_iter()
        .filter(|r| r["namespace"] == ns.name.as_str())
        .collect();
    assert_eq!(ours.len(), 1, "{ours:?}");
    let stats = second.records_of_kind("sensor_stats");
    let last = stats.last().expect("a final sensor_stats");
    assert_eq!(
        last["drops"]["containerd_store_unreadable"], 0,
        "{}",
        last["drops"]
    );
    assert_records_match_schema(&second.records());
}
