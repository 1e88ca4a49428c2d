//! What an image built on this host holds, and a provenance statement for it (issue 11).
//!
//! [`ImageEngine`] follows the build engine's records: at `build_started` it finds the
//! client's Dockerfile, meanwhile it notes downloaders (`wget -O`, `curl -o`) and the
//! connections of each process, and at `build_finished` with an image id it hands the build to
//! a worker thread ([`worker`]) that lists the layers the build added ([`contents`]), writes the
//! in-toto statement ([`provenance`]), signs it ([`dsse`]) and keeps it in the state directory
//! ([`store`]). The results come back as `image_contents` and `image_provenance` records on the
//! engine's next call (at the latest the next tick). A later `image_push` of the image adds the
//! pushed manifest to the statement's subjects.
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

pub mod cli;
pub mod contents;
pub mod downloads;
pub mod dsse;
pub mod layers;
pub mod provenance;
pub mod store;
pub mod walk;
pub mod worker;

use contents::StepDownload;
use provenance::DaemonInfo;
use worker::{Job, WorkerConfig};

use crate::engine::Engine;
use crate::output::record::{
    ApiClient, Body, BuildFinished, BuildStarted, Connect, ImagePush, ProcessExec, Record,
    Timestamp,
};
use crate::process::host::HostPaths;

/// Jobs waiting for the worker, at most; more are dropped and counted (`image_jobs_dropped`).
const QUEUE: usize = 32;
/// Processes remembered (pid → parent), downloaders, connecting processes.
const MAX_PROCS: usize = 65_536;
const MAX_DOWNLOADS: usize = 4096;
const MAX_CONNECTORS: usize = 16_384;
const MAX_DAEMONS: usize = 64;
/// How long `finish` waits for the worker at shutdown.
const FINISH_WAIT: Duration = Duration::from_secs(30);

/// A map that forgets its oldest entries past `cap`.
struct Bounded<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    cap: usize,
}

impl<K: std::hash::Hash + Eq + Clone, V> Bounded<K, V> {
    fn new(cap: usize) -> Self {
        Bounded {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap,
        }
    }
    fn entry(&mut self, k: K, v: impl FnOnce() -> V) -> &mut V {
        if !self.map.contains_key(&k) {
            if self.order.len() >= self.cap
                && let Some(old) = self.order.pop_front()
            {
                self.map.remove(&old);
            }
            self.order.push_back(k.clone());
        }
        self.map.entry(k).or_insert_with(v)
    }
    fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k)
    }
}

struct SeenDownload {
    pid: u32,
    ts: Timestamp,
    argv: Vec<String>,
    download: downloads::Download,
}

pub struct ImageConfig {
    pub paths: HostPaths,
    pub bounds: walk::Bounds,
    pub read_storage: bool,
    /// The state directory (statements are kept under `provenance/`); `None`: not kept.
    pub state_dir: Option<PathBuf>,
    pub key: Option<ed25519_dalek::SigningKey>,
}

pub struct ImageEngine {
    jobs: SyncSender<Job>,
    done: Receiver<Vec<Body>>,
    pending: usize,
    dropped: u64,
    parents: Bounded<u32, u32>,
    downloads: VecDeque<SeenDownload>,
    connects: Bounded<u32, Vec<(String, u16)>>,
    daemons: Bounded<u32, DaemonInfo>,
}

impl ImageEngine {
    pub fn new(cfg: ImageConfig) -> Self {
        let (jobs, job_rx) = mpsc::sync_channel(QUEUE);
        let (done_tx, done) = mpsc::channel();
        let wc = WorkerConfig {
            paths: cfg.paths,
            bounds: cfg.bounds,
            read_storage: cfg.read_storage,
            store: cfg.state_dir.as_deref().map(store::ProvenanceStore::new),
            key: cfg.key,
        };
        let spawned = std::thread::Builder::new()
            .name("image-contents".into())
            .spawn(move || worker::run(wc, job_rx, done_tx));
        if let Err(e) = spawned {
            // Without the thread every job is dropped (and counted); the sensor runs on.
            tracing::warn!("image contents worker not started: {e}");
        }
        ImageEngine {
            jobs,
            done,
            pending: 0,
            dropped: 0,
            parents: Bounded::new(MAX_PROCS),
            downloads: VecDeque::new(),
            connects: Bounded::new(MAX_CONNECTORS),
            daemons: Bounded::new(MAX_DAEMONS),
        }
    }

    fn send(&mut self, job: Job) {
        match self.jobs.try_send(job) {
            Ok(()) => self.pending += 1,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped += 1,
        }
    }

    fn collect(&mut self, out: &mut Vec<Body>) {
        while let Ok(bodies) = self.done.try_recv() {
            self.pending = self.pending.saturating_sub(1);
            out.extend(bodies);
        }
    }

    fn on_exec(&mut self, rec: &Record, e: &ProcessExec) {
        *self.parents.entry(e.process.pid, || 0) = e.process.ppid;
        if let Some(d) = downloads::parse(&e.argv) {
            if self.downloads.len() >= MAX_DOWNLOADS {
                self.downloads.pop_front();
            }
            self.downloads.push_back(SeenDownload {
                pid: e.process.pid,
                ts: rec.ts,
                argv: e.argv.clone(),
                download: d,
            });
        }
    }

    fn on_connect(&mut self, c: &Connect) {
        if c.protocol != "tcp" {
            return;
        }
        if let (Some(a), Some(p)) = (&c.dst_addr, c.dst_port) {
            let list = self.connects.entry(c.process.pid, Vec::new);
            if list.len() < 64 && !list.iter().any(|(x, y)| x == a && *y == p) {
                list.push((a.clone(), p));
            }
        }
    }

    /// Whether `pid` is `root` or descends from it (as far as the remembered parents go).
    fn descends(&self, mut pid: u32, root: u32) -> bool {
        for _ in 0..64 {
            if pid == root {
                return true;
            }
            match self.parents.get(&pid) {
                Some(&pp) if pp != 0 && pp != pid => pid = pp,
                _ => return false,
            }
        }
        false
    }

    fn step_downloads(&self, b: &BuildFinished, end: Timestamp) -> Vec<StepDownload> {
        let mut out = Vec::new();
        for d in &self.downloads {
            let step = b.steps.iter().find(|s| {
                d.ts >= s.start && d.ts <= s.end.unwrap_or(end) && self.descends(d.pid, s.pid)
            });
            if let Some(s) = step {
                out.push(StepDownload {
                    step: s.index,
                    pid: d.pid,
                    argv: d.argv.clone(),
                    download: d.download.clone(),
                    connected: self.connects.get(&d.pid).cloned().unwrap_or_default(),
                });
            }
        }
        out
    }

    fn on_build_started(&mut self, b: &BuildStarted) {
        if let Some((path, shown)) = dockerfile_of(&b.client) {
            self.send(Job::Dockerfile {
                build_id: b.build_id.clone(),
                path,
                shown,
            });
        }
    }

    fn on_build_finished(&mut self, rec: &Record, b: &BuildFinished) {
        // buildah/podman records carry no image id: their tag finds it in containers-storage.
        let tool_image = matches!(b.builder.as_str(), "buildah" | "podman")
            && b.status == "succeeded"
            && !(b.tags.is_empty() && b.params.tags.is_empty());
        if b.image_id.is_none() && !tool_image {
            return;
        }
        let daemon = daemon_pid(&b.build_id)
            .and_then(|pid| self.daemons.get(&pid).cloned())
            .unwrap_or_default();
        let downloads = self.step_downloads(b, rec.ts);
        self.send(Job::Build {
            build: Box::new(b.clone()),
            record_id: rec.id,
            host: rec.host.clone(),
            downloads,
            daemon,
        });
    }

    fn on_push(&mut self, rec: &Record, p: &ImagePush) {
        if let (Some(image_id), Some(digest)) = (&p.image_id, &p.digest)
            && p.build_id.is_some()
        {
            self.send(Job::Push {
                image_id: image_id.clone(),
                reference: p.reference.clone(),
                digest: digest.clone(),
                record_id: rec.id,
            });
        }
    }
}

/// The daemon's pid from a dockerd build id (`b-<ns>-<pid>-<fd>`, docs/builds.md).
fn daemon_pid(build_id: &str) -> Option<u32> {
    let mut parts = build_id.strip_prefix("b-")?.split('-');
    parts.next()?;
    parts.next()?.parse().ok()
}

/// The `Server:` header of an API server's response (`Docker/20.10.24+dfsg1 (linux)`).
fn server_header(data: &str) -> Option<String> {
    let i = data.find("\r\nServer: ")?;
    let rest = &data[i + 10..];
    let v = rest.split("\r\n").next()?.trim();
    (!v.is_empty() && v.len() <= 128).then(|| v.to_string())
}

/// The Dockerfile a builder command line names: `-f FILE` (relative to the client's working
/// directory) or `CONTEXT/Dockerfile`, the context being the last argument. Returns the path
/// to read (through the client's /proc root, under the host root) and the path as the client
/// names it.
fn dockerfile_of(c: &ApiClient) -> Option<(PathBuf, String)> {
    let pid = c.pid?;
    let argv = &c.argv;
    let prog = argv.first()?.rsplit('/').next()?;
    let sub = match prog {
        "docker" | "nerdctl" => ["build", "builder", "buildx", "image"].as_slice(),
        "buildah" => ["bud", "build", "build-using-dockerfile"].as_slice(),
        "podman" => ["build", "image"].as_slice(),
        _ => return None,
    };
    let start = argv.iter().position(|a| sub.contains(&a.as_str()))?;
    let args = &argv[start + 1..];
    let mut file: Option<&str> = None;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "-f" || a == "--file" {
            file = args.get(i + 1).map(String::as_str);
            i += 1;
        } else if let Some(v) = a.strip_prefix("--file=") {
            file = Some(v);
        }
        i += 1;
    }
    let context = args
        .last()
        .map(String::as_str)
        .filter(|a| !a.starts_with('-'))?;
    if context == "-" || context.contains("://") || context.starts_with("git@") || file == Some("-")
    {
        return None;
    }
    // The host's /proc (`SENSOR_PROC` in a container), like the rest of the sensor.
    let proc = crate::process::proc::proc_root().join(pid.to_string());
    let cwd = std::fs::read_link(proc.join("cwd")).ok()?;
    let shown = match file {
        Some(f) => cwd.join(f),
        None => cwd.join(context).join("Dockerfile"),
    };
    let read = proc
        .join("root")
        .join(shown.strip_prefix("/").unwrap_or(&shown));
    Some((read, shown.display().to_string()))
}

impl Engine for ImageEngine {
    fn observe(&mut self, rec: &Record, out: &mut Vec<Body>) {
        match &rec.body {
            Body::ProcessExec(e) => self.on_exec(rec, e),
            Body::ProcessFork(f) => {
                *self.parents.entry(f.child_pid, || 0) = f.process.pid;
            }
            Body::Connect(c) => self.on_connect(c),
            Body::ApiRequest(r) => {
                let d = self.daemons.entry(r.process.pid, DaemonInfo::default);
                if d.exe.is_none() {
                    d.exe = r.process.exe.clone();
                }
            }
            Body::ApiResponse(r) => {
                if let Some(s) = server_header(&r.data) {
                    self.daemons
                        .entry(r.process.pid, DaemonInfo::default)
                        .server = Some(s);
                }
            }
            Body::BuildStarted(b) => self.on_build_started(b),
            Body::BuildFinished(b) => self.on_build_finished(rec, b),
            Body::ImagePush(p) => self.on_push(rec, p),
            _ => {}
        }
        self.collect(out);
    }

    fn seed(&mut self, rec: &Record, _out: &mut Vec<Body>) {
        if let Body::ProcessExec(e) = &rec.body {
            *self.parents.entry(e.process.pid, || 0) = e.process.ppid;
        }
    }

    fn tick(&mut self, _now: Timestamp, out: &mut Vec<Body>) {
        self.collect(out);
    }

    fn finish(&mut self, _now: Timestamp, out: &mut Vec<Body>) {
        let deadline = Instant::now() + FINISH_WAIT;
        while self.pending > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.done.recv_timeout(left) {
                Ok(bodies) => {
                    self.pending -= 1;
                    out.extend(bodies);
                }
                Err(_) => {
                    tracing::warn!("{} image contents jobs unfinished at exit", self.pending);
                    break;
                }
            }
        }
    }

    fn drops(&self, drops: &mut BTreeMap<String, u64>) {
        drops.insert("image_jobs_dropped".into(), self.dropped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_pid_and_server_header() {
        assert_eq!(daemon_pid("b-1795451739826140112-3450-22"), Some(3450));
        assert_eq!(daemon_pid("x"), None);
        assert_eq!(
            server_header("HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nServer: Docker/20.10.24+dfsg1 (linux)\r\n\r\n")
                .as_deref(),
            Some("Docker/20.10.24+dfsg1 (linux)")
        );
    }

    #[test]
    fn dockerfile_from_docker_and_buildah_argv() {
        let me = std::process::id();
        let cwd = std::env::current_dir().unwrap();
        let c = |argv: &[&str]| ApiClient {
            pid: Some(me),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let (_, shown) =
            dockerfile_of(&c(&["/usr/bin/docker", "build", "-t", "x:1", "/ctx"])).unwrap();
        assert_eq!(shown, "/ctx/Dockerfile");
        let (read, shown) = dockerfile_of(&c(&["buildah", "bud", "-f", "df/F", "."])).unwrap();
        assert_eq!(PathBuf::from(&shown), cwd.join("df/F"));
        assert!(read.starts_with(format!("/proc/{me}/root")));
        assert!(dockerfile_of(&c(&["docker", "build", "-"])).is_none());
        assert!(dockerfile_of(&c(&["curl", "-X", "POST"])).is_none());
    }
}
