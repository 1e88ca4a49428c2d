//! Image lineage: which build made an image, and the image's later container starts and pushes.
//!
//! Consumes `build_finished` (records the image in the [`LineageStore`]), `api_request`
//! (`POST /containers/{id}/start`, `POST /images/{name}/push`), `api_response` (the push's
//! `{"aux":{"Tag","Digest"}}`), and `process_exec` of OCI runtimes; produces `container_start`
//! and `image_push`, each linked to the build of its image when it was built on this host.
use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::SharedLineage;
use crate::detect::policy::ALLOWED;
use crate::engine::Engine;
use crate::lineage::store::{ImageLineage, PushSeen};
use crate::output::record::{
    ApiClient, ApiRequest, ApiResponse, Body, BuildFinished, ContainerStart, Evidence,
    ImageDiscovered, ImagePush, KubernetesRef, Record, Timestamp,
};
use crate::process::host::{self, HostPaths};
use crate::process::runtime_exec::{RuntimeStart, container_start};
use crate::proto::api::ApiCall;

/// A start request waits this long for the runtime to create the container before the
/// sensor looks at the container's state on disk instead.
const START_FALLBACK_MS: u64 = 2_000;
/// ... and is given up after this long.
const START_GIVE_UP_MS: u64 = 30_000;
/// A push with no response seen at all is reported (without digest) after this long.
const PUSH_NO_RESPONSE_MS: u64 = 60_000;
/// A push is forgotten after this long.
const PUSH_GIVE_UP_MS: u64 = 600_000;
/// Container ids already reported, kept this long to report each start once.
const RECENT_START_MS: u64 = 60_000;

struct PendingStart {
    reference: String,
    client: ApiClient,
    record_id: u64,
    ts: Timestamp,
}

struct PendingPush {
    name: String,
    tag: String,
    client: ApiClient,
    record_id: u64,
    ts: Timestamp,
    responses: u64,
    response_ids: Vec<u64>,
    tags_reported: Vec<String>,
    /// The image `name:tag` named when the push was asked for, and the digests Docker already
    /// had for it in that repository: a new one on disk confirms a push whose response stream
    /// was not captured.
    image_id: Option<String>,
    digests_before: Vec<String>,
}

pub struct LineageEngine {
    paths: HostPaths,
    store: SharedLineage,
    starts: Vec<PendingStart>,
    pushes: HashMap<(u32, i32), PendingPush>,
    recent: HashMap<String, Timestamp>,
    unresolved_starts: u64,
    unconfirmed_pushes: u64,
    /// The image store was compared with the lineage store (once, at start).
    reconciled: bool,
    last_alive: Option<Timestamp>,
}

/// How often the store records that the sensor is watching (`seen_until`).
const ALIVE_EVERY_MS: u64 = 60_000;

impl LineageEngine {
    pub fn new(paths: HostPaths, store: SharedLineage) -> Self {
        LineageEngine {
            paths,
            store,
            starts: Vec::new(),
            pushes: HashMap::new(),
            recent: HashMap::new(),
            unresolved_starts: 0,
            unconfirmed_pushes: 0,
            reconciled: false,
            last_alive: None,
        }
    }

    /// At start: images dockerd's store holds that were created after the previous run's
    /// `seen_until` and that the lineage store does not know were made while nothing watched
    /// (a build while the sensor was stopped): one `image_discovered` each.
    fn reconcile(&mut self, out: &mut Vec<Body>) {
        if std::mem::replace(&mut self.reconciled, true) {
            return;
        }
        let Some(since) = self.store().previous_seen_until() else {
            return;
        };
        let mut found: Vec<(&str, host::DockerImage)> = host::docker_images(&self.paths)
            .into_iter()
            .map(|i| ("docker", i))
            .chain(
                host::containers_images(&self.paths)
                    .into_iter()
                    .map(|i| ("containers-storage", i)),
            )
            .filter(|(_, i)| i.created.is_some_and(|c| c > since))
            .collect();
        found.sort_by_key(|(_, i)| i.created);
        for (runtime, img) in found {
            if self.store().get(&img.id).is_some() {
                continue;
            }
            let Some(created) = img.created else {
                continue;
            };
            out.push(Body::ImageDiscovered(ImageDiscovered {
                image_id: img.id,
                runtime: runtime.into(),
                created,
                seen_until: Some(since),
                tags: img.tags,
                repo_digests: img.repo_digests,
                history: img.history,
                parent: img.parent,
            }));
        }
    }

    /// `built_here`, `registry` or `unexplained`, for a Docker image (see ContainerStart).
    fn image_origin(&self, image_id: Option<&str>, built_here: bool) -> Option<String> {
        let origin = if built_here {
            "built_here"
        } else if host::docker_image_has_digest(&self.paths, image_id?) {
            "registry"
        } else {
            "unexplained"
        };
        Some(origin.to_string())
    }

    fn store(&self) -> std::sync::MutexGuard<'_, crate::lineage::store::LineageStore> {
        // The store stays consistent across a panic elsewhere: each update is one insert.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn on_build_finished(&mut self, rec: &Record, b: &BuildFinished) {
        // buildah and podman builds carry no image id: their store names it by tag.
        let on_storage = matches!(b.builder.as_str(), "buildah" | "podman");
        let resolved = || {
            b.tags.iter().chain(&b.params.tags).find_map(|t| {
                if on_storage {
                    host::containers_image_id(&self.paths, t)
                } else {
                    host::docker_image_id(&self.paths, t)
                }
            })
        };
        let image_id = match b.status.as_str() {
            "succeeded" => b.image_id.clone().or_else(resolved),
            // The end was not seen (sensor stopped, or the stream was not parsed): the tag
            // names this build's image only if Docker created that image during the build.
            "failed" | "cancelled" => None,
            _ => b.image_id.clone().or_else(resolved).filter(|id| {
                host::docker_image_created(&self.paths, id)
                    .is_some_and(|c| c.unix_nanos() >= b.started.unix_nanos() - 1_000_000_000)
            }),
        };
        let Some(image_id) = image_id else {
            tracing::debug!(build_id = %b.build_id, status = %b.status, "build without a known image id: no lineage");
            return;
        };
        let outbound_not_allowed = b
            .outbound
            .iter()
            .filter(|o| o.protocol != "unix" && o.policy != ALLOWED)
            .map(|o| match &o.dns_name {
                Some(n) => format!("{}:{} ({n}) {}", o.dst_addr, o.dst_port, o.policy),
                None => format!("{}:{} {}", o.dst_addr, o.dst_port, o.policy),
            })
            .collect();
        let tags = if b.tags.is_empty() {
            b.params.tags.clone()
        } else {
            b.tags.clone()
        };
        self.store().insert(
            ImageLineage {
                image_id,
                build_id: b.build_id.clone(),
                built_at: rec.ts,
                tags,
                digests: Vec::new(),
                pushes: Vec::new(),
                outbound_not_allowed,
                record_id: rec.id,
            },
            rec.ts,
        );
    }

    fn on_request(&mut self, rec: &Record, a: &ApiRequest) {
        match ApiCall::interpret(&a.method, &a.endpoint, a.query.as_deref()) {
            ApiCall::ContainerStart { reference } => {
                let mut client = a.client.clone();
                crate::process::client_origin::place_client(&mut client, &self.paths);
                self.starts.push(PendingStart {
                    reference,
                    client,
                    record_id: rec.id,
                    ts: rec.ts,
                });
            }
            ApiCall::ImagePush { name, tag } => {
                // `tag` empty pushes every tag of the repository: no single image to watch on
                // disk.
                let image_id = if tag.is_empty() {
                    None
                } else {
                    host::docker_image_id(&self.paths, &format!("{name}:{tag}"))
                };
                let digests_before = image_id
                    .as_deref()
                    .map(|i| host::docker_repo_digests(&self.paths, &name, i))
                    .unwrap_or_default();
                self.pushes.insert(
                    (a.process.pid, a.fd),
                    PendingPush {
                        name,
                        tag,
                        image_id,
                        digests_before,
                        client: a.client.clone(),
                        record_id: rec.id,
                        ts: rec.ts,
                        responses: 0,
                        response_ids: Vec::new(),
                        tags_reported: Vec::new(),
                    },
                );
            }
            _ => {
                // Another request on a connection that carried a push ends that push's stream.
                self.pushes.remove(&(a.process.pid, a.fd));
            }
        }
    }

    fn on_response(&mut self, rec: &Record, r: &ApiResponse, out: &mut Vec<Body>) {
        let key = (r.process.pid, r.fd);
        let Some(p) = self.pushes.get_mut(&key) else {
            return;
        };
        p.responses += 1;
        p.response_ids.push(rec.id);
        let mut failed = false;
        let mut done = Vec::new();
        for msg in json_messages(&r.data) {
            if msg.get("errorDetail").is_some() || msg.get("error").is_some() {
                failed = true;
            }
            let aux = &msg["aux"];
            if let (Some(tag), Some(digest)) = (aux["Tag"].as_str(), aux["Digest"].as_str()) {
                done.push((tag.to_string(), digest.to_string()));
            }
        }
        for (tag, digest) in done {
            let Some(p) = self.pushes.get_mut(&key) else {
                break;
            };
            if p.tags_reported.contains(&tag) {
                continue;
            }
            p.tags_reported.push(tag.clone());
            let (name, client, mut ids) = (p.name.clone(), p.client.clone(), vec![p.record_id]);
            ids.extend(p.response_ids.iter().copied());
            out.push(self.image_push(&name, &tag, Some(digest), client, ids));
        }
        if failed {
            tracing::debug!(
                "push of {} failed",
                self.pushes
                    .get(&key)
                    .map(|p| p.name.as_str())
                    .unwrap_or("?")
            );
            self.pushes.remove(&key);
        }
    }

    fn image_push(
        &self,
        name: &str,
        tag: &str,
        digest: Option<String>,
        client: ApiClient,
        ids: Vec<u64>,
    ) -> Body {
        let reference = if tag.is_empty() {
            name.to_string()
        } else {
            format!("{name}:{tag}")
        };
        let (image_id, build_id) = {
            let store = self.store();
            match store.find_by_ref(&reference) {
                Some(l) => (Some(l.image_id.clone()), Some(l.build_id.clone())),
                None => {
                    let id = host::docker_image_id(&self.paths, &reference);
                    let build = id
                        .as_deref()
                        .and_then(|i| store.get(i))
                        .map(|l| l.build_id.clone());
                    (id, build)
                }
            }
        };
        Body::ImagePush(ImagePush {
            registry: registry_of(name),
            reference,
            digest,
            image_id,
            client,
            build_id,
            evidence: Evidence {
                record_ids: ids,
                pids: Vec::new(),
            },
        })
    }

    fn on_runtime_start(&mut self, rec: &Record, s: RuntimeStart, out: &mut Vec<Body>) {
        if self.recent.contains_key(&s.id) {
            return;
        }
        match s.runtime {
            "docker" => {
                let Some(c) = host::docker_container(&self.paths, &s.id) else {
                    return;
                };
                let Some(i) = self.starts.iter().position(|p| {
                    p.reference == c.id
                        || (p.reference.len() >= 4 && c.id.starts_with(&p.reference))
                        || c.name.as_deref() == Some(p.reference.trim_start_matches('/'))
                }) else {
                    // Started by dockerd itself (a legacy build's step container, a restart
                    // policy): not a start a client asked for.
                    return;
                };
                let p = self.starts.remove(i);
                let image = c
                    .image_ref
                    .clone()
                    .or(c.image_id.clone())
                    .unwrap_or_else(|| "unknown".into());
                out.push(self.container_start(
                    rec.ts,
                    c.id,
                    c.name,
                    image,
                    c.image_id,
                    "docker",
                    None,
                    p.client,
                    vec![p.record_id, rec.id],
                ));
            }
            runtime => {
                let info = host::bundle_info(&self.paths, &s.bundle).unwrap_or_default();
                if info.container_type.as_deref() == Some("sandbox") {
                    return;
                }
                let kubernetes = match (&info.namespace, &info.pod, &info.container_name) {
                    (Some(ns), Some(pod), Some(c)) => Some(KubernetesRef {
                        namespace: ns.clone(),
                        pod: pod.clone(),
                        container: c.clone(),
                    }),
                    _ => None,
                };
                let image = info.image_name.clone().unwrap_or_else(|| "unknown".into());
                let image_id = self.store().find_by_ref(&image).map(|l| l.image_id.clone());
                let client = ApiClient {
                    transport: "unknown".into(),
                    ..Default::default()
                };
                out.push(self.container_start(
                    rec.ts,
                    s.id.clone(),
                    info.container_name.clone(),
                    image,
                    image_id,
                    runtime,
                    kubernetes,
                    client,
                    vec![rec.id],
                ));
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn container_start(
        &mut self,
        ts: Timestamp,
        container_id: String,
        name: Option<String>,
        image: String,
        image_id: Option<String>,
        runtime: &str,
        kubernetes: Option<KubernetesRef>,
        client: ApiClient,
        ids: Vec<u64>,
    ) -> Body {
        self.recent.insert(container_id.clone(), ts);
        let (image_id, build) = {
            let store = self.store();
            let l = image_id
                .as_deref()
                .and_then(|i| store.get(i))
                .or_else(|| store.find_by_ref(&image));
            (
                image_id.or_else(|| l.map(|l| l.image_id.clone())),
                l.map(|l| (l.build_id.clone(), l.built_at)),
            )
        };
        let image_origin = if runtime == "docker" {
            self.image_origin(image_id.as_deref(), build.is_some())
        } else {
            None
        };
        Body::ContainerStart(ContainerStart {
            container_id,
            name,
            image,
            image_id,
            runtime: runtime.to_string(),
            kubernetes,
            client,
            seconds_since_build: build.as_ref().map(|(_, at)| ts.millis_since(at) / 1000),
            build_id: build.map(|(b, _)| b),
            evidence: Evidence {
                record_ids: ids,
                pids: Vec::new(),
            },
            image_origin,
        })
    }
}

impl Engine for LineageEngine {
    fn observe(&mut self, rec: &Record, out: &mut Vec<Body>) {
        match &rec.body {
            Body::SensorStarted(_) => self.reconcile(out),
            Body::BuildFinished(b) => self.on_build_finished(rec, b),
            Body::ApiRequest(a) => self.on_request(rec, a),
            Body::ApiResponse(r) => self.on_response(rec, r, out),
            Body::ProcessExec(e) => {
                if let Some(s) = container_start(e) {
                    self.on_runtime_start(rec, s, out);
                }
            }
            // Our own image_push, fed back with its id: remember the push for the AN0946 chain.
            Body::ImagePush(p) => {
                if let Some(image_id) = &p.image_id {
                    let push = PushSeen {
                        reference: p.reference.clone(),
                        digest: p.digest.clone(),
                        at: rec.ts,
                        record_id: rec.id,
                    };
                    self.store().add_push(image_id, push);
                }
            }
            _ => {}
        }
    }

    fn tick(&mut self, now: Timestamp, out: &mut Vec<Body>) {
        // Starts the runtime's exec did not confirm (process events lost, or a runtime this
        // sensor does not parse): look at the container's state on disk.
        let mut i = 0;
        while i < self.starts.len() {
            let age = now.millis_since(&self.starts[i].ts);
            if age < START_FALLBACK_MS {
                i += 1;
                continue;
            }
            let p = &self.starts[i];
            let found = host::docker_container_by_ref(&self.paths, &p.reference).filter(|c| {
                c.running
                    && !self.recent.contains_key(&c.id)
                    && c.started_at
                        .is_some_and(|t| t.unix_nanos() >= p.ts.unix_nanos() - 2_000_000_000)
            });
            if let Some(c) = found {
                let p = self.starts.remove(i);
                let image = c
                    .image_ref
                    .clone()
                    .or(c.image_id.clone())
                    .unwrap_or_else(|| "unknown".into());
                let body = self.container_start(
                    now,
                    c.id,
                    c.name,
                    image,
                    c.image_id,
                    "docker",
                    None,
                    p.client,
                    vec![p.record_id],
                );
                out.push(body);
            } else if age >= START_GIVE_UP_MS {
                self.starts.remove(i);
                self.unresolved_starts += 1;
            } else {
                i += 1;
            }
        }
        // A push whose response stream was not captured (the kernel side watches a connection
        // only when the request line names `/push` early enough, and events can be lost): dockerd
        // records `name@digest` for the image when the push succeeds, so a new one on disk
        // confirms the push and gives its digest.
        let mut confirmed = Vec::new();
        for (k, p) in &self.pushes {
            let Some(id) = p.image_id.as_deref().filter(|_| p.responses == 0) else {
                continue;
            };
            if let Some(d) = host::docker_repo_digests(&self.paths, &p.name, id)
                .into_iter()
                .find(|d| !p.digests_before.contains(d))
            {
                confirmed.push((*k, d));
            }
        }
        for (k, digest) in confirmed {
            if let Some(p) = self.pushes.remove(&k) {
                out.push(self.image_push(
                    &p.name,
                    &p.tag,
                    Some(digest),
                    p.client,
                    vec![p.record_id],
                ));
            }
        }
        let mut expired = Vec::new();
        for (k, p) in &self.pushes {
            let age = now.millis_since(&p.ts);
            if (p.responses == 0 && age >= PUSH_NO_RESPONSE_MS) || age >= PUSH_GIVE_UP_MS {
                expired.push(*k);
            }
        }
        for k in expired {
            if let Some(p) = self.pushes.remove(&k)
                && p.responses == 0
            {
                // No response was captured: report the push as requested, without digest.
                self.unconfirmed_pushes += 1;
                out.push(self.image_push(&p.name, &p.tag, None, p.client, vec![p.record_id]));
            }
        }
        self.recent
            .retain(|_, t| now.millis_since(t) < RECENT_START_MS);
        self.store().prune(now);
        if self
            .last_alive
            .is_none_or(|t| now.millis_since(&t) >= ALIVE_EVERY_MS)
        {
            self.last_alive = Some(now);
            self.store().mark_alive(now);
        }
    }

    fn finish(&mut self, now: Timestamp, _out: &mut Vec<Body>) {
        self.store().mark_alive(now);
    }

    fn drops(&self, drops: &mut BTreeMap<String, u64>) {
        let store = self.store();
        *drops.entry("lineage_evicted".into()).or_default() += store.evicted;
        *drops.entry("lineage_write_failed".into()).or_default() += store.write_failures;
        *drops
            .entry("container_start_unresolved".into())
            .or_default() += self.unresolved_starts;
        *drops.entry("image_push_unconfirmed".into()).or_default() += self.unconfirmed_pushes;
    }
}

/// JSON objects in an HTTP response fragment (headers, chunk sizes and partial lines skipped).
fn json_messages(data: &str) -> Vec<Value> {
    data.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// `docker.io` unless the first component names a host (has `.` or `:`, or is `localhost`).
pub fn registry_of(name: &str) -> String {
    match name.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_string()
        }
        _ => "docker.io".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::detect::testutil::*;
    use crate::lineage::store::LineageStore;
    use crate::output::record::{OutboundConnection, ProcessExec, ProcessRef};
    use crate::process::host::tests::fake_docker;

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
        e.observe(&rec(10, 100, bf), &mut out);
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
        e.observe(&rec(11, 101, runc_create(&id)), &mut out);
        assert!(out.is_empty());
        e.observe(
            &rec(
                12,
                130,
                api_post(&format!("/containers/{id}/start"), None, unix_client(0)),
            ),
            &mut out,
        );
        e.observe(&rec(13, 130, runc_create(&id)), &mut out);
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
        let mut repos: Value =
            serde_json::from_slice(&std::fs::read(&repos_path).unwrap()).unwrap();
        let repo = tag.split(':').next().unwrap().to_string();
        let id = format!("sha256:{hex}");
        repos["Repositories"][&repo][tag] = Value::String(id.clone());
        if let Some(d) = digest {
            repos["Repositories"][&repo][format!("{repo}@{d}")] = Value::String(id);
        }
        std::fs::write(&repos_path, repos.to_string()).unwrap();
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
        let dir = std::env::temp_dir().join(format!("sensor-lin-rec-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // The previous run watched until 22:10 (ts(0) is 2023-11-14T22:13:20Z).
        let mut first = LineageStore::open(&dir, 10, 3650, ts(0)).unwrap();
        first.mark_alive(ts(-200));
        drop(first);
        let store = Arc::new(Mutex::new(
            LineageStore::open(&dir, 10, 3650, ts(0)).unwrap(),
        ));
        let mut e = LineageEngine::new(paths.clone(), store);
        let mut out = Vec::new();
        let started = Body::SensorStarted(crate::output::record::SensorStarted {
            version: "t".into(),
            kernel: "t".into(),
            probes: vec![],
            probes_failed: Default::default(),
            seeded_processes: 0,
            runtime_names: vec![],
            raw: false,
        });
        e.observe(&rec(1, 0, started.clone()), &mut out);
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
        e.observe(&rec(2, 1, started), &mut out);
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
        e.observe(
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
        e.observe(&rec(1, 100, bf), &mut out);
        e.observe(
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
        e.observe(&rec(3, 111, api_response(data)), &mut out);
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
        e.observe(&rec(4, 111, pushed), &mut out);
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
        e.observe(
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
        e.observe(
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
        e.observe(
            &rec(
                3,
                111,
                api_response(
                    "{\"errorDetail\":{\"message\":\"no route\"},\"error\":\"no route\"}\n",
                ),
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
}
