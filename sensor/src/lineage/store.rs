//! The persisted lineage of images built on this host: image id → build, tags, digests, pushes.
//!
//! One JSON file, `<state-dir>/lineage.json`, replaced whole by write-to-temp, fsync, rename and
//! fsync of the directory, so a crash leaves either the old or the new file, never half of one.
//! Bounded: at most `max_images` images (the oldest builds are dropped first), and images built
//! more than `retention_days` ago are forgotten (see docs/detections.md, "Lineage store").
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::output::record::Timestamp;

pub const STORE_FILE: &str = "lineage.json";
const STORE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create state directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write lineage store {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read lineage store {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode lineage store: {0}")]
    Encode(#[from] serde_json::Error),
}

/// A push of a built image, as the sensor saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PushSeen {
    pub reference: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    pub at: Timestamp,
    /// The image_push record (ids are per sensor run).
    #[serde(default)]
    pub record_id: u64,
}

/// What the sensor knows about one image built on this host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageLineage {
    pub image_id: String,
    pub build_id: String,
    /// When the build finished.
    pub built_at: Timestamp,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Registry digests (`sha256:...`) pushes reported.
    #[serde(default)]
    pub digests: Vec<String>,
    #[serde(default)]
    pub pushes: Vec<PushSeen>,
    /// The build's outbound destinations that were not `allowed` (`addr:port (name) policy`).
    #[serde(default)]
    pub outbound_not_allowed: Vec<String>,
    /// build_finished record id (ids are per sensor run).
    #[serde(default)]
    pub record_id: u64,
}

#[derive(Default, Serialize, Deserialize)]
struct StoreFile {
    version: u32,
    images: Vec<ImageLineage>,
    /// Until when a sensor watched this host (its last heartbeat or its stop): images created
    /// after it and absent from the store were made while nothing watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seen_until: Option<Timestamp>,
}

/// The lineage store: in memory, written through to disk when it has a directory.
#[derive(Debug)]
pub struct LineageStore {
    path: Option<PathBuf>,
    images: BTreeMap<String, ImageLineage>,
    max_images: usize,
    retention_ns: i64,
    /// Images dropped to stay within bounds (reported as `lineage_evicted`).
    pub evicted: u64,
    /// Failed writes (reported as `lineage_write_failed`); the store keeps working in memory.
    pub write_failures: u64,
    /// `seen_until` as the last run left it (None: no earlier run, or an in-memory store).
    previous_seen_until: Option<Timestamp>,
    seen_until: Option<Timestamp>,
}

impl LineageStore {
    /// A store that is never written (for `sensor replay` and tests).
    pub fn in_memory(max_images: usize, retention_days: u64) -> Self {
        LineageStore {
            path: None,
            images: BTreeMap::new(),
            max_images: max_images.max(1),
            retention_ns: i64::try_from(retention_days.saturating_mul(86_400_000_000_000))
                .unwrap_or(i64::MAX),
            evicted: 0,
            write_failures: 0,
            previous_seen_until: None,
            seen_until: None,
        }
    }

    /// Opens (creating the directory if needed) `<dir>/lineage.json`. A file that does not parse
    /// is set aside as `lineage.json.corrupt` and the store starts empty, with a warning.
    pub fn open(
        dir: &Path,
        max_images: usize,
        retention_days: u64,
        now: Timestamp,
    ) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(STORE_FILE);
        let mut store = LineageStore {
            path: Some(path.clone()),
            ..LineageStore::in_memory(max_images, retention_days)
        };
        match fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<StoreFile>(&bytes) {
                Ok(file) => {
                    store.previous_seen_until = file.seen_until;
                    store.seen_until = file.seen_until;
                    for img in file.images {
                        store.images.insert(img.image_id.clone(), img);
                    }
                }
                Err(e) => {
                    let aside = dir.join(format!("{STORE_FILE}.corrupt"));
                    tracing::warn!(
                        "lineage store {} does not parse ({e}); moved to {}",
                        path.display(),
                        aside.display()
                    );
                    let _ = fs::rename(&path, &aside);
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StoreError::Read { path, source }),
        }
        store.prune(now);
        // Fail early, at start, when the directory is not writable.
        store.save()?;
        Ok(store)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Until when the previous run watched the host (see [`LineageStore::mark_alive`]).
    pub fn previous_seen_until(&self) -> Option<Timestamp> {
        self.previous_seen_until
    }

    /// Records that the sensor watched the host until `now` and writes the store.
    pub fn mark_alive(&mut self, now: Timestamp) {
        self.seen_until = Some(now);
        self.save_or_count();
    }

    pub fn get(&self, image_id: &str) -> Option<&ImageLineage> {
        self.images.get(image_id)
    }

    /// The image a tag (`name:tag`, `name` meaning `name:latest`) or digest names, newest build first.
    pub fn find_by_ref(&self, reference: &str) -> Option<&ImageLineage> {
        let want = normalize_ref(reference);
        self.images
            .values()
            .filter(|i| {
                i.tags.iter().any(|t| normalize_ref(t) == want)
                    || i.digests.iter().any(|d| reference.ends_with(d.as_str()))
            })
            .max_by_key(|i| i.built_at)
    }

    /// Records (or replaces) a built image, then applies the bounds and writes.
    pub fn insert(&mut self, img: ImageLineage, now: Timestamp) {
        // A tag moves to the newest image that carries it.
        for other in self.images.values_mut() {
            other.tags.retain(|t| !img.tags.contains(t));
        }
        self.images.insert(img.image_id.clone(), img);
        self.prune(now);
        self.save_or_count();
    }

    /// Adds a push to a known image; returns false when the image is not in the store.
    pub fn add_push(&mut self, image_id: &str, push: PushSeen) -> bool {
        let Some(img) = self.images.get_mut(image_id) else {
            return false;
        };
        if let Some(d) = &push.digest
            && !img.digests.contains(d)
        {
            img.digests.push(d.clone());
        }
        img.pushes.push(push);
        // Bound a single image's history too.
        if img.pushes.len() > 100 {
            img.pushes.remove(0);
        }
        self.save_or_count();
        true
    }

    /// Drops expired images and the oldest beyond `max_images`; returns how many went.
    pub fn prune(&mut self, now: Timestamp) -> usize {
        let before = self.images.len();
        let cutoff = now.unix_nanos().saturating_sub(self.retention_ns);
        self.images.retain(|_, i| i.built_at.unix_nanos() >= cutoff);
        if self.images.len() > self.max_images {
            let mut by_age: Vec<(Timestamp, String)> = self
                .images
                .values()
                .map(|i| (i.built_at, i.image_id.clone()))
                .collect();
            by_age.sort();
            let excess = self.images.len() - self.max_images;
            for (_, id) in by_age.into_iter().take(excess) {
                self.images.remove(&id);
            }
        }
        let gone = before - self.images.len();
        self.evicted += gone as u64;
        gone
    }

    fn save_or_count(&mut self) {
        if let Err(e) = self.save() {
            self.write_failures += 1;
            tracing::warn!("{e}");
        }
    }

    /// Writes the whole store: temp file, fsync, rename over, fsync the directory.
    pub fn save(&self) -> Result<(), StoreError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let file = StoreFile {
            version: STORE_VERSION,
            images: self.images.values().cloned().collect(),
            seen_until: self.seen_until,
        };
        let bytes = serde_json::to_vec(&file)?;
        let tmp = path.with_extension("json.tmp");
        let werr = |source| StoreError::Write {
            path: path.clone(),
            source,
        };
        let mut f = File::create(&tmp).map_err(werr)?;
        f.write_all(&bytes).map_err(werr)?;
        f.sync_all().map_err(werr)?;
        drop(f);
        fs::rename(&tmp, path).map_err(werr)?;
        if let Some(dir) = path.parent()
            && let Ok(d) = File::open(dir)
        {
            // Makes the rename itself durable; failure here loses at most this last update.
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// `docker.io/library/x:latest`, `library/x`, `x` all compare equal; a missing tag is `latest`.
pub fn normalize_ref(r: &str) -> String {
    let r = r.split('@').next().unwrap_or(r);
    let last_slash = r.rfind('/').map(|i| i + 1).unwrap_or(0);
    let s = if r[last_slash..].contains(':') {
        r.to_string()
    } else {
        format!("{r}:latest")
    };
    let s = s
        .strip_prefix("docker.io/")
        .or_else(|| s.strip_prefix("index.docker.io/"))
        .unwrap_or(&s);
    s.strip_prefix("library/").unwrap_or(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_unix_nanos(1_700_000_000_000_000_000 + s * 1_000_000_000)
    }

    fn img(id: &str, build: &str, at: i64, tags: &[&str]) -> ImageLineage {
        ImageLineage {
            image_id: id.into(),
            build_id: build.into(),
            built_at: ts(at),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            digests: vec![],
            pushes: vec![],
            outbound_not_allowed: vec![],
            record_id: 1,
        }
    }

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sensor-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn seen_until_is_kept_for_the_next_run() {
        let dir = tempdir("alive");
        let mut s = LineageStore::open(&dir, 10, 30, ts(0)).unwrap();
        assert_eq!(s.previous_seen_until(), None);
        s.mark_alive(ts(7));
        drop(s);
        let mut s = LineageStore::open(&dir, 10, 30, ts(9)).unwrap();
        assert_eq!(s.previous_seen_until(), Some(ts(7)));
        s.mark_alive(ts(12));
        // This run's heartbeat does not move what the previous run left.
        assert_eq!(s.previous_seen_until(), Some(ts(7)));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn survives_reopen_and_finds_by_tag_and_digest() {
        let dir = tempdir("reopen");
        let mut s = LineageStore::open(&dir, 10, 30, ts(0)).unwrap();
        s.insert(img("sha256:a", "b1", 0, &["x:1"]), ts(0));
        assert!(s.add_push(
            "sha256:a",
            PushSeen {
                reference: "reg:5000/x:1".into(),
                digest: Some("sha256:d".into()),
                at: ts(5),
                record_id: 3
            }
        ));
        drop(s);
        let s = LineageStore::open(&dir, 10, 30, ts(10)).unwrap();
        assert_eq!(s.get("sha256:a").unwrap().build_id, "b1");
        assert_eq!(
            s.find_by_ref("docker.io/library/x:1").unwrap().image_id,
            "sha256:a"
        );
        assert_eq!(
            s.find_by_ref("reg:5000/x@sha256:d").unwrap().image_id,
            "sha256:a"
        );
        assert!(!dir.join("lineage.json.tmp").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bounded_by_count_and_age() {
        let mut s = LineageStore::in_memory(2, 1);
        s.insert(img("sha256:1", "b1", 0, &[]), ts(0));
        s.insert(img("sha256:2", "b2", 10, &[]), ts(10));
        s.insert(img("sha256:3", "b3", 20, &[]), ts(20));
        assert_eq!(s.len(), 2);
        assert!(s.get("sha256:1").is_none());
        s.prune(ts(86_400 + 15));
        assert_eq!(s.len(), 1);
        assert!(s.get("sha256:3").is_some());
        assert_eq!(s.evicted, 2);
    }

    #[test]
    fn corrupt_file_is_set_aside() {
        let dir = tempdir("corrupt");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(STORE_FILE), b"{\"version\":1,\"images\":[{").unwrap();
        let s = LineageStore::open(&dir, 10, 30, ts(0)).unwrap();
        assert_eq!(s.len(), 0);
        assert!(dir.join("lineage.json.corrupt").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tag_moves_to_newest_image() {
        let mut s = LineageStore::in_memory(10, 30);
        s.insert(img("sha256:1", "b1", 0, &["x:1"]), ts(0));
        s.insert(img("sha256:2", "b2", 5, &["x:1"]), ts(5));
        assert_eq!(s.find_by_ref("x:1").unwrap().build_id, "b2");
        assert!(s.get("sha256:1").unwrap().tags.is_empty());
    }

    #[test]
    fn normalizes_references() {
        assert_eq!(normalize_ref("alpine"), "alpine:latest");
        assert_eq!(normalize_ref("docker.io/library/alpine:3"), "alpine:3");
        assert_eq!(normalize_ref("localhost:5000/x"), "localhost:5000/x:latest");
        assert_eq!(normalize_ref("docker.io/me/x:1"), "me/x:1");
    }
}
