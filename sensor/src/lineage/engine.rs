//! Image lineage: which build made an image, and the image's later container starts and pushes.
//!
//! Consumes `build_finished` (records the image in the [`LineageStore`]), `api_request`
//! (`POST /containers/{id}/start`, `POST /images/{name}/push`), `api_response` (the push's
//! `{"aux":{"Tag","Digest"}}`), and `process_exec` of OCI runtimes; produces `container_start`
//! and `image_push`, each linked to the build of its image when it was built on this host.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::mpsc;

use serde_json::Value;

use super::SharedLineage;
use super::containerd::{ANSWER_WAIT, ContainerImage, ContainerdImage, ContainerdLink};
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
/// Starts waiting for containerd's answer at most; more are reported at once, without it.
const MAX_CONTAINERD_WAITING: usize = 1024;

/// A container containerd started itself (not dockerd), waiting for containerd to say which
/// image it runs.
struct WaitingStart {
    start: RuntimeStart,
    info: host::BundleInfo,
    record_id: u64,
    ts: Timestamp,
}

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
    /// containerd, read by a thread of its own (lineage::containerd): the image stores' scan,
    /// taken when it comes, after the start's reconciliation; and the images of containers
    /// containerd starts itself.
    containerd: Option<ContainerdLink>,
    waiting: Vec<WaitingStart>,
    /// The images dockerd's store and containers-storage held at start: an image of dockerd's
    /// store that containerd also holds (the containerd snapshotter) is reported once.
    store_ids: HashSet<String>,
    containerd_failed: u64,
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
            containerd: None,
            waiting: Vec::new(),
            store_ids: HashSet::new(),
            containerd_failed: 0,
        }
    }

    /// containerd's thread: its scan of the image stores to reconcile with as well (see
    /// `reconcile`), and the images of the containers it starts.
    pub fn with_containerd(mut self, link: Option<ContainerdLink>) -> Self {
        self.containerd = link;
        self
    }

    /// containerd's images, once the scan has come and the start's reconciliation is done:
    /// each image unknown to the lineage store and to dockerd's store, one `image_discovered`.
    fn reconcile_containerd(&mut self, out: &mut Vec<Body>) {
        if !self.reconciled {
            return;
        }
        let Some(rx) = self.containerd.as_ref().and_then(|l| l.scan.as_ref()) else {
            return;
        };
        let scan = match rx.try_recv() {
            Ok(scan) => scan,
            Err(mpsc::TryRecvError::Empty) => return,
            Err(mpsc::TryRecvError::Disconnected) => {
                if let Some(l) = self.containerd.as_mut() {
                    l.scan = None;
                }
                return;
            }
        };
        if let Some(l) = self.containerd.as_mut() {
            l.scan = None;
        }
        self.containerd_failed += scan.failed;
        let since = self.store().previous_seen_until();
        let mut images: Vec<ContainerdImage> = scan.images;
        images.sort_by_key(|i| i.created);
        let mut reported = HashSet::new();
        for img in images {
            if self.store_ids.contains(&img.image_id)
                || self.store().get(&img.image_id).is_some()
                || !reported.insert((img.namespace.clone(), img.image_id.clone()))
            {
                continue;
            }
            out.push(Body::ImageDiscovered(ImageDiscovered {
                image_id: img.image_id,
                runtime: "containerd".into(),
                created: img.created,
                seen_until: since,
                tags: img.tags,
                repo_digests: img.repo_digests,
                history: img.history,
                parent: None,
                namespace: Some(img.namespace),
            }));
        }
        self.store_ids = HashSet::new();
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
        let all: Vec<(&str, host::DockerImage)> = host::docker_images(&self.paths)
            .into_iter()
            .map(|i| ("docker", i))
            .chain(
                host::containers_images(&self.paths)
                    .into_iter()
                    .map(|i| ("containers-storage", i)),
            )
            .collect();
        if self.containerd.is_some() {
            self.store_ids = all.iter().map(|(_, i)| i.id.clone()).collect();
        }
        let mut found: Vec<(&str, host::DockerImage)> = all
            .into_iter()
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
                namespace: None,
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
                out.push(self.docker_start(rec.ts, c, p, Some(rec.id)));
            }
            _ => {
                let info = host::bundle_info(&self.paths, &s.bundle).unwrap_or_default();
                if info.container_type.as_deref() == Some("sandbox") {
                    return;
                }
                // Already waiting (a second create of the same container): reported once.
                if self.waiting.iter().any(|w| w.start.id == s.id) {
                    return;
                }
                // containerd's own starts: containerd says which image (the bundle does not,
                // or only by reference); the record waits for its answer, a few seconds at most.
                if let (Some(link), Some(ns)) = (&self.containerd, &s.namespace)
                    && matches!(s.runtime, "containerd" | "cri")
                    && self.waiting.len() < MAX_CONTAINERD_WAITING
                    && link.ask(ns, &s.id)
                {
                    self.waiting.push(WaitingStart {
                        start: s,
                        info,
                        record_id: rec.id,
                        ts: rec.ts,
                    });
                    return;
                }
                out.push(self.runtime_start(rec.ts, &s, info, vec![rec.id], None));
            }
        }
    }

    /// A start of another runtime than dockerd; `said`: what containerd said of it.
    fn runtime_start(
        &mut self,
        ts: Timestamp,
        s: &RuntimeStart,
        info: host::BundleInfo,
        ids: Vec<u64>,
        said: Option<&ContainerImage>,
    ) -> Body {
        let kubernetes = match (&info.namespace, &info.pod, &info.container_name) {
            (Some(ns), Some(pod), Some(c)) => Some(KubernetesRef {
                namespace: ns.clone(),
                pod: pod.clone(),
                container: c.clone(),
            }),
            _ => None,
        };
        let said = said.filter(|a| a.image.is_some());
        let image = said
            .and_then(|a| a.image.clone())
            .or(info.image_name)
            .unwrap_or_else(|| "unknown".into());
        let image_id = said
            .and_then(|a| a.image_id.clone())
            .or_else(|| self.store().find_by_ref(&image).map(|l| l.image_id.clone()));
        let client = ApiClient {
            transport: "unknown".into(),
            ..Default::default()
        };
        let mut body = self.container_start(
            ts,
            s.id.clone(),
            info.container_name,
            image,
            image_id,
            s.runtime,
            kubernetes,
            client,
            ids,
        );
        // As for dockerd's images: built here, pulled, or neither.
        if let (Body::ContainerStart(c), Some(a)) = (&mut body, said) {
            let origin = if c.build_id.is_some() {
                "built_here"
            } else if a.from_registry {
                "registry"
            } else {
                "unexplained"
            };
            c.image_origin = Some(origin.into());
        }
        body
    }

    /// containerd's answers about its own starts, and starts that waited long enough.
    fn containerd_starts(&mut self, now: Timestamp, out: &mut Vec<Body>) {
        while let Some(a) = self.containerd.as_ref().and_then(ContainerdLink::answer) {
            let Some(i) = self.waiting.iter().position(|w| {
                w.start.id == a.container_id
                    && w.start.namespace.as_deref() == Some(a.namespace.as_str())
            }) else {
                continue;
            };
            let w = self.waiting.remove(i);
            out.push(self.runtime_start(w.ts, &w.start, w.info, vec![w.record_id], Some(&a)));
        }
        let mut i = 0;
        while i < self.waiting.len() {
            if now.millis_since(&self.waiting[i].ts) < ANSWER_WAIT.as_millis() as u64 {
                i += 1;
                continue;
            }
            let w = self.waiting.remove(i);
            out.push(self.runtime_start(w.ts, &w.start, w.info, vec![w.record_id], None));
        }
    }

    /// The `container_start` of a client's start request that dockerd's container state
    /// confirms; `also` is the record that confirmed it, when one did.
    fn docker_start(
        &mut self,
        ts: Timestamp,
        c: host::DockerContainer,
        p: PendingStart,
        also: Option<u64>,
    ) -> Body {
        let image = c
            .image_ref
            .clone()
            .or(c.image_id.clone())
            .unwrap_or_else(|| "unknown".into());
        let ids = std::iter::once(p.record_id).chain(also).collect();
        self.container_start(
            ts, c.id, c.name, image, c.image_id, "docker", None, p.client, ids,
        )
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
    /// The lineage a build_finished or image_push record stands for is on disk before the
    /// record is out: a reader that sees the record and then kills the sensor loses nothing.
    fn commit(&mut self, rec: &Record) {
        match &rec.body {
            Body::BuildFinished(b) => self.on_build_finished(rec, b),
            // Our own image_push, with its id: remember the push for the AN0946 chain.
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

    fn observe(&mut self, rec: &Record, out: &mut Vec<Body>) {
        match &rec.body {
            Body::SensorStarted(_) => {
                self.reconcile(out);
                self.reconcile_containerd(out);
            }
            Body::ApiRequest(a) => self.on_request(rec, a),
            Body::ApiResponse(r) => self.on_response(rec, r, out),
            Body::ProcessExec(e) => {
                if let Some(s) = container_start(e) {
                    self.on_runtime_start(rec, s, out);
                }
            }
            _ => {}
        }
    }

    fn tick(&mut self, now: Timestamp, out: &mut Vec<Body>) {
        self.reconcile_containerd(out);
        self.containerd_starts(now, out);
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
                let body = self.docker_start(now, c, p, None);
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

    fn finish(&mut self, now: Timestamp, out: &mut Vec<Body>) {
        // Starts still waiting for containerd are reported as they are.
        self.containerd_starts(now, out);
        for w in std::mem::take(&mut self.waiting) {
            out.push(self.runtime_start(w.ts, &w.start, w.info, vec![w.record_id], None));
        }
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
        *drops
            .entry("containerd_store_unreadable".into())
            .or_default() += self.containerd_failed;
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
mod tests;
