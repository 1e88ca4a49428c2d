//! The contents worker: one thread that walks layers, hashes files, builds, signs and stores
//! statements, so that the event loop never waits on the disk. Jobs arrive in a bounded queue;
//! results go back to the engine, which emits them on its next call.
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};

use ed25519_dalek::SigningKey;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::contents::{ContentsInput, StepDownload, image_contents};
use super::dsse;
use super::provenance::{
    DaemonInfo, DockerfileRead, MAX_DOCKERFILE_TEXT, StatementInput, statement,
};
use super::store::ProvenanceStore;
use super::walk::Bounds;
use crate::output::record::{Body, BuildFinished, Evidence, ImageProvenance};
use crate::process::host::HostPaths;

/// Dockerfiles read, kept until their build ends.
const MAX_DOCKERFILES: usize = 256;
/// Dockerfiles larger than this are not read.
const MAX_DOCKERFILE_BYTES: u64 = 1024 * 1024;
/// Recent statements kept in memory, for pushes when there is no state directory.
const MAX_RECENT: usize = 16;

pub enum Job {
    /// Read the Dockerfile at `path` (a path under the host root) for `build_id`.
    Dockerfile {
        build_id: String,
        path: PathBuf,
        shown: String,
    },
    Build {
        build: Box<BuildFinished>,
        record_id: u64,
        host: String,
        downloads: Vec<StepDownload>,
        daemon: DaemonInfo,
    },
    /// A built image was pushed: add the pushed manifest to its statement's subjects.
    Push {
        image_id: String,
        reference: String,
        digest: String,
        record_id: u64,
    },
}

pub struct WorkerConfig {
    pub paths: HostPaths,
    pub bounds: Bounds,
    /// Read the image store (off in `sensor replay`: the recording's images are not the host's now).
    pub read_storage: bool,
    pub store: Option<ProvenanceStore>,
    pub key: Option<SigningKey>,
}

struct Worker {
    cfg: WorkerConfig,
    dockerfiles: HashMap<String, DockerfileRead>,
    dockerfile_order: VecDeque<String>,
    recent: VecDeque<ImageProvenance>,
}

pub fn run(cfg: WorkerConfig, jobs: Receiver<Job>, done: Sender<Vec<Body>>) {
    let mut w = Worker {
        cfg,
        dockerfiles: HashMap::new(),
        dockerfile_order: VecDeque::new(),
        recent: VecDeque::new(),
    };
    for job in jobs {
        let out = w.handle(job);
        if done.send(out).is_err() {
            return;
        }
    }
}

fn read_dockerfile(path: &std::path::Path, shown: String) -> Option<DockerfileRead> {
    let md = std::fs::metadata(path).ok()?;
    if !md.is_file() || md.len() > MAX_DOCKERFILE_BYTES {
        return None;
    }
    let bytes = std::fs::read(path).ok()?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    let truncated = text.len() > MAX_DOCKERFILE_TEXT;
    if truncated {
        let mut cut = MAX_DOCKERFILE_TEXT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    Some(DockerfileRead {
        path: shown,
        sha256,
        text,
        truncated,
    })
}

impl Worker {
    fn handle(&mut self, job: Job) -> Vec<Body> {
        match job {
            Job::Dockerfile {
                build_id,
                path,
                shown,
            } => {
                if let Some(d) = read_dockerfile(&path, shown) {
                    if self.dockerfile_order.len() >= MAX_DOCKERFILES
                        && let Some(old) = self.dockerfile_order.pop_front()
                    {
                        self.dockerfiles.remove(&old);
                    }
                    self.dockerfile_order.push_back(build_id.clone());
                    self.dockerfiles.insert(build_id, d);
                }
                Vec::new()
            }
            Job::Build {
                build,
                record_id,
                host,
                downloads,
                daemon,
            } => self.build(&build, record_id, &host, &downloads, &daemon),
            Job::Push {
                image_id,
                reference,
                digest,
                record_id,
            } => self.push(&image_id, &reference, &digest, record_id),
        }
    }

    fn build(
        &mut self,
        b: &BuildFinished,
        record_id: u64,
        host: &str,
        downloads: &[StepDownload],
        daemon: &DaemonInfo,
    ) -> Vec<Body> {
        let dockerfile = self.dockerfiles.remove(&b.build_id);
        self.dockerfile_order.retain(|id| *id != b.build_id);
        let mut out = Vec::new();
        let (contents, bases) = if self.cfg.read_storage {
            let (c, bases) = image_contents(&ContentsInput {
                paths: &self.cfg.paths,
                build: b,
                downloads,
                bounds: self.cfg.bounds,
                record_id,
            });
            (Some(c), bases)
        } else {
            (None, Vec::new())
        };
        // buildah/podman builds get their image id from the store.
        let mut resolved;
        let b = match &contents {
            Some(c) if b.image_id.is_none() && !c.image_id.is_empty() => {
                resolved = b.clone();
                resolved.image_id = Some(c.image_id.clone());
                &resolved
            }
            _ => b,
        };
        let st = statement(&StatementInput {
            host,
            build: b,
            contents: contents.as_ref(),
            dockerfile: dockerfile.as_ref(),
            daemon,
            bases: &bases,
            pushes: &[],
        });
        if let Some(c) = contents {
            out.push(Body::ImageContents(c));
        }
        if let (Some(st), Some(image_id)) = (st, b.image_id.as_ref()) {
            let p = ImageProvenance {
                build_id: b.build_id.clone(),
                image_id: image_id.clone(),
                statement: st,
                envelope: None,
                stored: None,
                evidence: Evidence {
                    record_ids: vec![record_id],
                    pids: Vec::new(),
                },
            };
            out.push(Body::ImageProvenance(self.seal(p)));
        }
        out
    }

    /// Signs (when a key is configured), stores and remembers a statement.
    fn seal(&mut self, mut p: ImageProvenance) -> ImageProvenance {
        p.envelope = self.cfg.key.as_ref().and_then(|k| {
            let payload = serde_json::to_vec(&p.statement).ok()?;
            Some(dsse::sign(k, &payload))
        });
        p.stored = None;
        if let Some(store) = &self.cfg.store {
            match store.put(&p) {
                Ok(path) => p.stored = Some(path.display().to_string()),
                Err(e) => tracing::warn!("provenance of {}: {e}", p.image_id),
            }
        }
        self.recent.retain(|r| r.image_id != p.image_id);
        if self.recent.len() >= MAX_RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(p.clone());
        p
    }

    fn push(&mut self, image_id: &str, reference: &str, digest: &str, record_id: u64) -> Vec<Body> {
        let known = self
            .recent
            .iter()
            .find(|r| r.image_id == image_id)
            .cloned()
            .or_else(|| self.cfg.store.as_ref()?.find(image_id).ok());
        let Some(mut p) = known else {
            return Vec::new();
        };
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Vec::new();
        }
        let Some(subjects) = p.statement["subject"].as_array_mut() else {
            return Vec::new();
        };
        if subjects
            .iter()
            .any(|s| s["name"] == reference && s["digest"]["sha256"] == hex)
        {
            return Vec::new();
        }
        subjects.push(json!({ "name": reference, "digest": { "sha256": hex },
            "annotations": { "kind": "pushed_manifest" } }));
        p.evidence.record_ids.push(record_id);
        vec![Body::ImageProvenance(self.seal(p))]
    }
}
