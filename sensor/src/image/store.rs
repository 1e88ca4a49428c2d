//! Statements kept in the state directory: `<state-dir>/provenance/<image hex>.json`, one
//! `image_provenance` record body per image, each replaced whole by write-to-temp, fsync,
//! rename (as the lineage store does), so a crash leaves the old or the new file.
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::output::record::ImageProvenance;

pub const DIR: &str = "provenance";
/// Images kept; the oldest files go first.
pub const MAX_KEPT: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ProvenanceStoreError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a stored statement: {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no statement for {0} in {1} (images built while the sensor ran there have one)")]
    NotFound(String, PathBuf),
    #[error("{0} names more than one image: give more of its id")]
    Ambiguous(String),
    #[error("bad image id {0:?}")]
    BadId(String),
}

#[derive(Clone, Debug)]
pub struct ProvenanceStore {
    dir: PathBuf,
}

fn image_hex(id: &str) -> Option<&str> {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

impl ProvenanceStore {
    pub fn new(state_dir: &Path) -> Self {
        ProvenanceStore {
            dir: state_dir.join(DIR),
        }
    }

    /// Writes one image's statement; returns the file's path.
    pub fn put(&self, p: &ImageProvenance) -> Result<PathBuf, ProvenanceStoreError> {
        let hex = image_hex(&p.image_id)
            .ok_or_else(|| ProvenanceStoreError::BadId(p.image_id.clone()))?;
        let path = self.dir.join(format!("{hex}.json"));
        let werr = |source| ProvenanceStoreError::Write {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(&self.dir).map_err(werr)?;
        let mut kept = p.clone();
        kept.stored = None;
        let bytes = serde_json::to_vec_pretty(&kept).map_err(|e| werr(std::io::Error::other(e)))?;
        let tmp = path.with_extension("json.tmp");
        let mut f = File::create(&tmp).map_err(werr)?;
        f.write_all(&bytes).map_err(werr)?;
        f.sync_all().map_err(werr)?;
        drop(f);
        fs::rename(&tmp, &path).map_err(werr)?;
        if let Ok(d) = File::open(&self.dir) {
            // Makes the rename durable; failure here loses at most this last update.
            let _ = d.sync_all();
        }
        self.prune();
        Ok(path)
    }

    fn files(&self) -> Vec<PathBuf> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect()
    }

    fn prune(&self) {
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = self
            .files()
            .into_iter()
            .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
            .collect();
        if files.len() <= MAX_KEPT {
            return;
        }
        files.sort();
        for (_, p) in &files[..files.len() - MAX_KEPT] {
            let _ = fs::remove_file(p);
        }
    }

    fn read(path: &Path) -> Result<ImageProvenance, ProvenanceStoreError> {
        let bytes = fs::read(path).map_err(|source| ProvenanceStoreError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| ProvenanceStoreError::Decode {
            path: path.to_path_buf(),
            source,
        })
    }

    /// By image id (`sha256:...`, the hex, or a unique prefix of at least 12 digits) or by a
    /// name in the statement's subjects (a tag, a pushed reference).
    pub fn find(&self, image: &str) -> Result<ImageProvenance, ProvenanceStoreError> {
        let hex = image.strip_prefix("sha256:").unwrap_or(image);
        if let Some(h) = image_hex(hex) {
            let p = self.dir.join(format!("{}.json", h.to_ascii_lowercase()));
            if p.is_file() {
                return Self::read(&p);
            }
        } else if hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<PathBuf> = self
                .files()
                .into_iter()
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(hex))
                })
                .collect();
            match hits.as_slice() {
                [one] => return Self::read(one),
                [] => {}
                _ => return Err(ProvenanceStoreError::Ambiguous(image.to_string())),
            }
        }
        // By name: the newest statement whose subjects name it.
        let mut best: Option<(std::time::SystemTime, ImageProvenance)> = None;
        for p in self.files() {
            let Ok(rec) = Self::read(&p) else { continue };
            let named = rec.statement["subject"]
                .as_array()
                .is_some_and(|s| s.iter().any(|x| x["name"] == image));
            let t = p.metadata().and_then(|m| m.modified()).ok();
            if let (true, Some(t)) = (named, t)
                && best.as_ref().is_none_or(|(bt, _)| t > *bt)
            {
                best = Some((t, rec));
            }
        }
        best.map(|(_, r)| r)
            .ok_or_else(|| ProvenanceStoreError::NotFound(image.to_string(), self.dir.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::record::Evidence;

    #[test]
    fn put_then_find_by_id_prefix_and_tag() {
        let dir = std::env::temp_dir().join(format!("sensor-prov-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let s = ProvenanceStore::new(&dir);
        let id = format!("sha256:{}", "ab".repeat(32));
        let p = ImageProvenance {
            build_id: "b-1".into(),
            image_id: id.clone(),
            statement: serde_json::json!({"subject":[{"name":"app:1"}]}),
            envelope: None,
            stored: None,
            evidence: Evidence::default(),
        };
        let path = s.put(&p).unwrap();
        assert!(path.ends_with(format!("{}.json", "ab".repeat(32))));
        assert_eq!(s.find(&id).unwrap(), p);
        assert_eq!(s.find("abababababab").unwrap(), p);
        assert_eq!(s.find("app:1").unwrap(), p);
        assert!(matches!(
            s.find("other:1"),
            Err(ProvenanceStoreError::NotFound(..))
        ));
        assert!(
            !dir.join(DIR)
                .join(format!("{}.json.tmp", "ab".repeat(32)))
                .exists()
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
