//! containerd's own image store, read over its gRPC API (the containerd project's bindings) at
//! start, for the reconciliation with the lineage store (`image_discovered`, runtime
//! `containerd`).
//!
//! Per socket: every namespace (`Namespaces.List`: `k8s.io` for the CRI, `moby` for dockerd
//! with the containerd snapshotter, `default` for ctr and nerdctl), its images
//! (`Images.List`), and for those created after the previous run's `seen_until` the image id
//! (the config digest) and history from the content store (`Content.Read` of the manifest,
//! the host platform's manifest of an index, and the config).
//!
//! The same thread then answers the lineage engine's questions about containers containerd
//! starts itself (`ctr run`, nerdctl, the CRI): which image (`Containers.Get`, `Images.Get`),
//! and whether it came from a registry (a `name@digest` name, or the content store's
//! `containerd.io/distribution.source.*` label, which a pull sets on what it fetched).
//!
//! The thread has a small runtime of its own, so a containerd that hangs or is absent never
//! holds up the sensor's start or its event loop: a connect timeout, a deadline for the whole
//! scan and for each question, and the lineage engine takes the answers whenever they come.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use containerd_client::services::v1::{
    GetContainerRequest, GetImageRequest, InfoRequest, ListImagesRequest, ListNamespacesRequest,
    ReadContentRequest, containers_client::ContainersClient, content_client::ContentClient,
    images_client::ImagesClient, namespaces_client::NamespacesClient,
};
use containerd_client::tonic::{self, Request, transport::Channel};
use serde_json::Value;

use crate::output::record::Timestamp;
use crate::process::host::{self, HostPaths};

/// Where containerd listens: the system's (and the CRI's), and the one dockerd runs itself.
pub const DEFAULT_SOCKETS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/var/run/docker/containerd/containerd.sock",
];

/// A socket that takes longer than this to connect is taken as hung.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The whole scan, every socket, namespace and content read.
const SCAN_DEADLINE: Duration = Duration::from_secs(15);
/// Bounds on what one socket is asked: namespaces, images resolved through the content store
/// (more new images are still reported, with the target's digest as their id), bytes of one
/// manifest, index or config.
const MAX_NAMESPACES: usize = 256;
const MAX_RESOLVED: usize = 512;
const MAX_BLOB: i64 = 4 << 20;
/// Indexes nested in indexes followed at most.
const MAX_INDEX_DEPTH: usize = 2;
/// One question about a container, every socket.
const LOOKUP_DEADLINE: Duration = Duration::from_secs(3);
/// How long the lineage engine waits for an answer before it reports the start without.
pub const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// The label containerd's pull puts on the content it fetched from a registry.
const DISTRIBUTION_SOURCE: &str = "containerd.io/distribution.source.";

/// One image of a containerd namespace created after the previous run's `seen_until`.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerdImage {
    pub namespace: String,
    /// The config digest, or the target's digest when the content store could not tell it.
    pub image_id: String,
    /// The earliest `created_at` of the names pointing at it: when the store first had it.
    pub created: Timestamp,
    /// Its names that are not digest references.
    pub tags: Vec<String>,
    /// The digests of its `name@sha256:...` names.
    pub repo_digests: Vec<String>,
    pub history: Vec<String>,
}

/// What a scan found, and how many sockets could not be read (absent ones are not counted).
#[derive(Debug, Default)]
pub struct Scan {
    pub images: Vec<ContainerdImage>,
    pub failed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot connect")]
    Connect(#[source] tonic::transport::Error),
    #[error("no answer to the connect within {0:?}")]
    ConnectTimeout(Duration),
    #[error("no answer within the scan's deadline ({0:?})")]
    Deadline(Duration),
    #[error("{what}: {:?}: {}", status.code(), status.message())]
    Rpc {
        what: &'static str,
        #[source]
        status: tonic::Status,
    },
}

fn rpc(what: &'static str) -> impl FnOnce(tonic::Status) -> ScanError {
    move |status| ScanError::Rpc { what, status }
}

/// The error and its causes on one line (tonic's transport error says "transport error" and
/// keeps the reason, "Connection refused", in its source).
fn one_line(e: &ScanError) -> String {
    let mut line = e.to_string();
    if matches!(e, ScanError::Connect(_)) {
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            // hyper's wrapper of the io error says the same as the io error.
            let c_line = c.to_string();
            if !line.ends_with(&c_line) {
                line.push_str(": ");
                line.push_str(&c_line);
            }
            cause = c.source();
        }
    }
    line
}

/// What containerd says of a container it runs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerImage {
    pub namespace: String,
    pub container_id: String,
    /// The image name the container was made from; `None`: no containerd knows the container,
    /// or it names no image.
    pub image: Option<String>,
    /// Its config digest (or target digest, see [`ContainerdImage::image_id`]).
    pub image_id: Option<String>,
    /// Pulled: a `name@digest` name, or content a pull fetched.
    pub from_registry: bool,
}

/// A question to the containerd thread: which image container `container_id` runs.
#[derive(Debug, PartialEq)]
pub struct Question {
    pub namespace: String,
    pub container_id: String,
    asked: std::time::Instant,
}

pub type Questions = tokio::sync::mpsc::UnboundedReceiver<Question>;

/// The lineage engine's end of the containerd thread: the start's scan, and questions about
/// containers with their answers.
pub struct ContainerdLink {
    pub scan: Option<mpsc::Receiver<Scan>>,
    ask: tokio::sync::mpsc::UnboundedSender<Question>,
    answers: mpsc::Receiver<ContainerImage>,
}

impl ContainerdLink {
    /// Asks which image container `id` of `namespace` runs; `false` when nobody will answer.
    pub fn ask(&self, namespace: &str, id: &str) -> bool {
        self.ask
            .send(Question {
                namespace: namespace.to_string(),
                container_id: id.to_string(),
                asked: std::time::Instant::now(),
            })
            .is_ok()
    }

    /// An answer, when one has come.
    pub fn answer(&self) -> Option<ContainerImage> {
        self.answers.try_recv().ok()
    }

    /// A link whose other end is the caller's (tests).
    #[cfg(test)]
    pub fn pair() -> (
        Self,
        mpsc::SyncSender<Scan>,
        Questions,
        mpsc::Sender<ContainerImage>,
    ) {
        let (scan_tx, scan) = mpsc::sync_channel(1);
        let (ask, asks) = tokio::sync::mpsc::unbounded_channel();
        let (answer_tx, answers) = mpsc::channel();
        let link = ContainerdLink {
            scan: Some(scan),
            ask,
            answers,
        };
        (link, scan_tx, asks, answer_tx)
    }
}

/// Starts the containerd thread over `sockets` (host paths, taken under `paths.host_root`):
/// the scan for images created after `since` (none without a previous run), then answers.
/// `None` when the thread could not start (said once).
pub fn start(
    paths: &HostPaths,
    sockets: &[PathBuf],
    since: Option<Timestamp>,
) -> Option<ContainerdLink> {
    let sockets: Vec<PathBuf> = sockets.iter().map(|s| paths.host(s)).collect();
    let (scan_tx, scan_rx) = mpsc::sync_channel(1);
    let (ask, asks) = tokio::sync::mpsc::unbounded_channel();
    let (answer_tx, answers) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("containerd".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::warn!("containerd not read: no runtime: {e}");
                    let _ = scan_tx.send(Scan {
                        failed: 1,
                        ..Default::default()
                    });
                    return;
                }
            };
            rt.block_on(async move {
                if let Some(since) = since {
                    let sockets = sockets.clone();
                    // Beside the answers: a slow scan does not hold them up. The receiver
                    // is gone only when the sensor is stopping.
                    tokio::spawn(async move {
                        let _ = scan_tx.send(scan(&sockets, since, SCAN_DEADLINE).await);
                    });
                }
                answer(&sockets, asks, answer_tx).await;
            });
        });
    match spawned {
        Ok(_) => Some(ContainerdLink {
            scan: since.map(|_| scan_rx),
            ask,
            answers,
        }),
        Err(e) => {
            tracing::warn!("containerd not read: cannot start a thread: {e}");
            None
        }
    }
}

/// The sockets that exist, each containerd once (a symlink, `/var/run` → `/run`).
fn live_sockets(sockets: &[PathBuf]) -> Vec<PathBuf> {
    let mut seen = Vec::new();
    for s in sockets {
        if let Ok(real) = std::fs::canonicalize(s)
            && !seen.contains(&real)
        {
            seen.push(real);
        }
    }
    seen
}

/// Answers questions until the engine goes away; connections are kept per socket.
async fn answer(sockets: &[PathBuf], mut asks: Questions, answers: mpsc::Sender<ContainerImage>) {
    let mut channels: HashMap<PathBuf, Channel> = HashMap::new();
    while let Some(q) = asks.recv().await {
        // Asked longer ago than the engine waits (a slow containerd, a burst of starts): the
        // start is reported already; skipping it keeps the queue short.
        if q.asked.elapsed() >= ANSWER_WAIT {
            continue;
        }
        let mut found = ContainerImage {
            namespace: q.namespace,
            container_id: q.container_id,
            ..Default::default()
        };
        let ask = lookup(sockets, &mut channels, &mut found);
        if tokio::time::timeout(LOOKUP_DEADLINE, ask).await.is_err() {
            tracing::debug!(
                "containerd: container {} not looked up within {LOOKUP_DEADLINE:?}",
                found.container_id
            );
        }
        if answers.send(found).is_err() {
            return;
        }
    }
}

/// Fills `found` from the first containerd that knows the container.
async fn lookup(
    sockets: &[PathBuf],
    channels: &mut HashMap<PathBuf, Channel>,
    found: &mut ContainerImage,
) {
    for socket in live_sockets(sockets) {
        let channel = match channels.get(&socket) {
            Some(c) => c.clone(),
            None => {
                let c = tokio::time::timeout(CONNECT_TIMEOUT, containerd_client::connect(&socket));
                match c.await {
                    Ok(Ok(c)) => {
                        channels.insert(socket.clone(), c.clone());
                        c
                    }
                    _ => continue,
                }
            }
        };
        let ns = found.namespace.clone();
        let Some(req) = namespaced(
            GetContainerRequest {
                id: found.container_id.clone(),
            },
            &ns,
        ) else {
            return;
        };
        let container = match ContainersClient::new(channel.clone()).get(req).await {
            Ok(r) => r.into_inner().container,
            Err(s) if s.code() == tonic::Code::NotFound => continue,
            Err(s) => {
                tracing::debug!("containerd at {}: {s}", socket.display());
                channels.remove(&socket);
                continue;
            }
        };
        let Some(name) = container.map(|c| c.image).filter(|n| !n.is_empty()) else {
            return;
        };
        found.from_registry = name.contains('@');
        found.image = Some(name.clone());
        let Some(req) = namespaced(GetImageRequest { name }, &ns) else {
            return;
        };
        let Some(target) = ImagesClient::new(channel.clone())
            .get(req)
            .await
            .ok()
            .and_then(|r| r.into_inner().image)
            .and_then(|i| i.target)
        else {
            return;
        };
        if let Some(req) = namespaced(
            InfoRequest {
                digest: target.digest.clone(),
            },
            &ns,
        ) && let Ok(info) = ContentClient::new(channel.clone()).info(req).await
        {
            found.from_registry |= info
                .into_inner()
                .info
                .is_some_and(|i| i.labels.keys().any(|k| k.starts_with(DISTRIBUTION_SOURCE)));
        }
        found.image_id = Some(
            config_of(&channel, &ns, &target.digest, &target.media_type)
                .await
                .map(|(id, _)| id)
                .unwrap_or(target.digest),
        );
        return;
    }
}

/// Every socket in turn, within `within` in all; the same containerd reached by two paths (a
/// symlink, `/var/run` → `/run`) is read once.
pub async fn scan(sockets: &[PathBuf], since: Timestamp, within: Duration) -> Scan {
    let deadline = tokio::time::Instant::now() + within;
    let mut out = Scan::default();
    let mut seen = HashSet::new();
    for socket in sockets {
        let real = match std::fs::canonicalize(socket) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::debug!("no containerd at {}", socket.display());
                continue;
            }
            Err(e) => {
                tracing::warn!("containerd at {}: not read: {e}", socket.display());
                out.failed += 1;
                continue;
            }
        };
        if !seen.insert(real.clone()) {
            continue;
        }
        match tokio::time::timeout_at(deadline, scan_socket(&real, since)).await {
            Ok(Ok(images)) => {
                tracing::debug!(
                    "containerd at {}: {} image(s) created since the last run",
                    socket.display(),
                    images.len()
                );
                out.images.extend(images);
            }
            Ok(Err(e)) => {
                tracing::warn!(
                    "containerd at {}: image store not read: {}",
                    socket.display(),
                    one_line(&e)
                );
                out.failed += 1;
            }
            Err(_) => {
                let e = ScanError::Deadline(within);
                tracing::warn!(
                    "containerd at {}: image store not read: {e}",
                    socket.display()
                );
                out.failed += 1;
            }
        }
    }
    out
}

fn namespaced<T>(msg: T, namespace: &str) -> Option<Request<T>> {
    let mut req = Request::new(msg);
    let ns = tonic::metadata::MetadataValue::try_from(namespace).ok()?;
    req.metadata_mut().insert("containerd-namespace", ns);
    Some(req)
}

fn timestamp(seconds: i64, nanos: i32) -> Option<Timestamp> {
    chrono::DateTime::from_timestamp(seconds, u32::try_from(nanos).ok()?).map(Timestamp)
}

/// The names of one namespace that point at one target, before the content store is asked.
struct Named {
    target: String,
    media_type: String,
    created: Timestamp,
    names: Vec<String>,
}

async fn scan_socket(socket: &Path, since: Timestamp) -> Result<Vec<ContainerdImage>, ScanError> {
    let channel = tokio::time::timeout(CONNECT_TIMEOUT, containerd_client::connect(socket))
        .await
        .map_err(|_| ScanError::ConnectTimeout(CONNECT_TIMEOUT))?
        .map_err(ScanError::Connect)?;
    let namespaces = NamespacesClient::new(channel.clone())
        .list(ListNamespacesRequest::default())
        .await
        .map_err(rpc("listing namespaces"))?
        .into_inner()
        .namespaces;
    let mut found = Vec::new();
    let mut resolved = 0;
    for ns in namespaces.iter().take(MAX_NAMESPACES) {
        let Some(req) = namespaced(ListImagesRequest::default(), &ns.name) else {
            continue;
        };
        let images = ImagesClient::new(channel.clone())
            .list(req)
            .await
            .map_err(rpc("listing images"))?
            .into_inner()
            .images;
        let mut by_target: BTreeMap<String, Named> = BTreeMap::new();
        for img in images {
            let (Some(target), Some(created)) = (
                img.target,
                img.created_at.and_then(|t| timestamp(t.seconds, t.nanos)),
            ) else {
                continue;
            };
            let n = by_target
                .entry(target.digest.clone())
                .or_insert_with(|| Named {
                    target: target.digest,
                    media_type: target.media_type,
                    created,
                    names: Vec::new(),
                });
            n.created = n.created.min(created);
            n.names.push(img.name);
        }
        // New: none of its names is older than the previous run's last moment (a new tag of
        // an old image is not a new image).
        let mut fresh: BTreeMap<String, ContainerdImage> = BTreeMap::new();
        for n in by_target.into_values().filter(|n| n.created > since) {
            let (image_id, history) = if resolved < MAX_RESOLVED {
                resolved += 1;
                match config_of(&channel, &ns.name, &n.target, &n.media_type).await {
                    Some((id, config)) => (id, host::image_history(&config)),
                    None => (n.target.clone(), Vec::new()),
                }
            } else {
                (n.target.clone(), Vec::new())
            };
            // Two targets of one image (an index and its manifest, both named): one record.
            let img = fresh
                .entry(image_id.clone())
                .or_insert_with(|| ContainerdImage {
                    namespace: ns.name.clone(),
                    image_id,
                    created: n.created,
                    tags: Vec::new(),
                    repo_digests: Vec::new(),
                    history,
                });
            img.created = img.created.min(n.created);
            for name in n.names {
                match name.split_once('@') {
                    Some((_, digest)) => {
                        if !img.repo_digests.iter().any(|d| d == digest) {
                            img.repo_digests.push(digest.to_string());
                        }
                    }
                    // The CRI also names each image by its bare id: not a tag.
                    None if name.starts_with("sha256:") => {}
                    None => img.tags.push(name),
                }
            }
        }
        found.extend(fresh.into_values());
    }
    Ok(found)
}

/// The image id (config digest) and config of a target: a manifest, or an index (the host
/// platform's manifest in it). `None` when the content store lacks a blob or it is not JSON.
async fn config_of(
    channel: &Channel,
    namespace: &str,
    digest: &str,
    media_type: &str,
) -> Option<(String, Value)> {
    let (mut digest, mut media_type) = (digest.to_string(), media_type.to_string());
    for _ in 0..=MAX_INDEX_DEPTH {
        let blob = read_json(channel, namespace, &digest).await?;
        let media = blob["mediaType"]
            .as_str()
            .unwrap_or(media_type.as_str())
            .to_string();
        if is_index(&media) || blob.get("manifests").is_some() {
            let m = platform_manifest(&blob)?;
            digest = m["digest"].as_str()?.to_string();
            media_type = m["mediaType"].as_str().unwrap_or_default().to_string();
            continue;
        }
        let config = blob["config"]["digest"].as_str()?.to_string();
        let value = read_json(channel, namespace, &config).await?;
        return Some((config, value));
    }
    None
}

fn is_index(media_type: &str) -> bool {
    matches!(
        media_type,
        "application/vnd.oci.image.index.v1+json"
            | "application/vnd.docker.distribution.manifest.list.v2+json"
    )
}

/// GOARCH of the host (what image platforms are named with).
fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The index entry for linux on the host's architecture.
fn platform_manifest(index: &Value) -> Option<&Value> {
    index["manifests"].as_array()?.iter().find(|m| {
        m["platform"]["os"] == "linux" && m["platform"]["architecture"] == host_architecture()
    })
}

async fn read_json(channel: &Channel, namespace: &str, digest: &str) -> Option<Value> {
    let req = namespaced(
        ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: MAX_BLOB,
        },
        namespace,
    )?;
    let mut stream = ContentClient::new(channel.clone())
        .read(req)
        .await
        .map_err(|e| tracing::debug!("containerd: {digest} not read: {e}"))
        .ok()?
        .into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream.message().await.ok()? {
        data.extend_from_slice(&chunk.data);
        if data.len() as i64 > MAX_BLOB {
            return None;
        }
    }
    serde_json::from_slice(&data).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_host_platform_of_an_index() {
        let index = serde_json::json!({"manifests": [
            {"digest": "sha256:a", "platform": {"os": "linux", "architecture": "s390x-not"}},
            {"digest": "sha256:att", "platform": {"os": "unknown", "architecture": "unknown"}},
            {"digest": "sha256:b", "platform": {"os": "linux", "architecture": host_architecture()}},
        ]});
        assert_eq!(platform_manifest(&index).unwrap()["digest"], "sha256:b");
        assert!(platform_manifest(&serde_json::json!({"manifests": []})).is_none());
    }

    /// Absent sockets are normal (no containerd on this host): nothing found, nothing failed.
    #[test]
    fn absent_sockets_are_not_failures() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let s = rt.block_on(scan(
            &[PathBuf::from("/nonexistent/containerd.sock")],
            Timestamp::now(),
            SCAN_DEADLINE,
        ));
        assert!(s.images.is_empty());
        assert_eq!(s.failed, 0);
    }

    /// A socket nobody listens on (a stale file) is one failure, at once; one whose listener
    /// never answers (a hung containerd: the kernel queues the connection, nothing reads it)
    /// is one failure at the deadline.
    #[test]
    fn dead_and_hung_sockets_are_one_failure_each_within_the_deadline() {
        let dir = std::env::temp_dir().join(format!("sensor-ctrd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (dead, hung) = (dir.join("dead.sock"), dir.join("hung.sock"));
        for p in [&dead, &hung] {
            let _ = std::fs::remove_file(p);
        }
        drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
        let rt0 = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt0
            .block_on(scan_socket(&dead, Timestamp::now()))
            .unwrap_err();
        let line = one_line(&e);
        assert!(
            line.starts_with("cannot connect") && line.contains("refused"),
            "{line}"
        );
        assert_eq!(line.matches("refused").count(), 1, "{line}");
        let _listener = std::os::unix::net::UnixListener::bind(&hung).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let within = Duration::from_secs(1);
        let t = std::time::Instant::now();
        let s = rt.block_on(scan(std::slice::from_ref(&dead), Timestamp::now(), within));
        assert_eq!(s.failed, 1);
        assert!(t.elapsed() < within, "{:?}", t.elapsed());
        let t = std::time::Instant::now();
        let s = rt.block_on(scan(
            &[dead.clone(), hung.clone()],
            Timestamp::now(),
            within,
        ));
        assert_eq!(s.failed, 2);
        assert!(s.images.is_empty());
        let took = t.elapsed();
        assert!(took >= within && took < within * 3, "{took:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
