//! Where dockerd keeps an image's layers (overlay2 driver), verified on dockerd 20.10 for both
//! the legacy builder and BuildKit:
//!
//! - `<root>/image/overlay2/imagedb/content/sha256/<id>`: the image config; `rootfs.diff_ids`
//!   lists the layers bottom up, `history` names what made each (`empty_layer` entries made none);
//! - `<root>/image/overlay2/layerdb/sha256/<chain-id>/cache-id`: the overlay2 directory of the
//!   layer, where chain-id(L0) = diff_id(L0) and chain-id(Ln) = sha256("<chain-id(Ln-1)> <diff_id(Ln)>");
//! - `<root>/overlay2/<cache-id>/diff`: the layer's files, deletions as 0:0 character devices,
//!   replaced directories with the `trusted.overlay.opaque` attribute.
use std::path::PathBuf;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::detect::HostPaths;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LayerError {
    #[error("image {0} is not in dockerd's image store (imagedb)")]
    NoImage(String),
    #[error("image config {path}: {why}")]
    BadConfig { path: String, why: String },
}

/// One layer of an image, bottom up.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    pub diff_id: String,
    /// The layer's `diff` directory, when layerdb names one.
    pub dir: Option<PathBuf>,
    /// The non-empty history entry of this layer.
    pub created_by: Option<String>,
}

/// An image as its config and layerdb describe it.
#[derive(Clone, Debug, PartialEq)]
pub struct DockerImage {
    pub id: String,
    pub layers: Vec<Layer>,
}

fn hex_of(id: &str) -> &str {
    id.strip_prefix("sha256:").unwrap_or(id)
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn imagedb(paths: &HostPaths) -> PathBuf {
    paths
        .host(&paths.docker_root)
        .join("image/overlay2/imagedb/content/sha256")
}

/// The full image id (`sha256:<64 hex>`) for a full or short id (legacy builds name their base
/// by 12 hex digits); `None` when no image or more than one matches.
pub fn resolve_image_id(paths: &HostPaths, id: &str) -> Option<String> {
    let hex = hex_of(id);
    if !is_hex(hex) || hex.len() > 64 {
        return None;
    }
    let dir = imagedb(paths);
    if hex.len() == 64 {
        return dir.join(hex).is_file().then(|| format!("sha256:{hex}"));
    }
    let mut found = None;
    for e in std::fs::read_dir(&dir).ok()?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(hex) {
            if found.is_some() {
                return None;
            }
            found = Some(format!("sha256:{name}"));
        }
    }
    found
}

/// chain-id of each layer, bottom up.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => {
                let h = Sha256::digest(format!("{prev} {d}").as_bytes());
                format!("sha256:{}", hex::encode(h))
            }
        };
        out.push(next);
    }
    out
}

/// Reads an image's config and finds each layer's directory.
pub fn docker_image(paths: &HostPaths, image_id: &str) -> Result<DockerImage, LayerError> {
    let hex = hex_of(image_id);
    let cfg_path = imagedb(paths).join(hex);
    if !is_hex(hex) || !cfg_path.is_file() {
        return Err(LayerError::NoImage(image_id.to_string()));
    }
    let bad = |why: String| LayerError::BadConfig {
        path: cfg_path.display().to_string(),
        why,
    };
    let bytes = std::fs::read(&cfg_path).map_err(|e| bad(e.to_string()))?;
    let cfg: Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let diff_ids: Vec<String> = cfg["rootfs"]["diff_ids"]
        .as_array()
        .ok_or_else(|| bad("no rootfs.diff_ids".into()))?
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    // History entries that made a layer, in order: one per diff_id when the config is whole.
    let history: Vec<Option<String>> = cfg["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter(|e| !e["empty_layer"].as_bool().unwrap_or(false))
                .map(|e| e["created_by"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let history_fits = history.len() == diff_ids.len();
    let layerdb = paths
        .host(&paths.docker_root)
        .join("image/overlay2/layerdb/sha256");
    let overlay = paths.host(&paths.docker_root).join("overlay2");
    let chains = chain_ids(&diff_ids);
    let layers = diff_ids
        .iter()
        .zip(&chains)
        .enumerate()
        .map(|(i, (diff_id, chain))| {
            let dir = std::fs::read_to_string(layerdb.join(hex_of(chain)).join("cache-id"))
                .ok()
                .map(|c| c.trim().to_string())
                // The cache id names a directory under overlay2/: nothing else.
                .filter(|c| !c.is_empty() && !c.contains('/') && c != "..")
                .map(|c| overlay.join(c).join("diff"));
            Layer {
                diff_id: diff_id.clone(),
                dir,
                created_by: if history_fits {
                    history[i].clone()
                } else {
                    None
                },
            }
        })
        .collect();
    Ok(DockerImage {
        id: format!("sha256:{hex}"),
        layers,
    })
}

/// How many of `image`'s bottom layers are `base`'s (its diff_ids are a prefix of the image's).
pub fn shared_prefix(image: &DockerImage, base: &DockerImage) -> usize {
    image
        .layers
        .iter()
        .zip(&base.layers)
        .take_while(|(a, b)| a.diff_id == b.diff_id)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_match_dockerd() {
        // From this machine's layerdb (dockerd 20.10.24): the directory of the second layer.
        let ids = chain_ids(&[
            "sha256:1f6249eec0f10ba3d61a4d476751ca0554c53246ca0763a1a5b0d6ee89d8f371".into(),
            "sha256:9d22df7468e46778e94d80feb75092e6f205d751f92718072f4b660f2089cfa6".into(),
        ]);
        assert_eq!(
            ids[0],
            "sha256:1f6249eec0f10ba3d61a4d476751ca0554c53246ca0763a1a5b0d6ee89d8f371"
        );
        assert_eq!(
            ids[1],
            "sha256:d5689f38a5056708baa5503a473396cd7bbf3257a9c680d37c5649a70bfff8ca"
        );
    }

    #[test]
    fn reads_config_layerdb_and_short_ids() {
        let root = std::env::temp_dir().join(format!("sensor-layers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let paths = HostPaths {
            host_root: root.clone(),
            docker_root: "/var/lib/docker".into(),
        };
        let d = root.join("var/lib/docker");
        let img = "ab".repeat(32);
        let l0 = format!("sha256:{}", "01".repeat(32));
        let l1 = format!("sha256:{}", "02".repeat(32));
        std::fs::create_dir_all(d.join("image/overlay2/imagedb/content/sha256")).unwrap();
        let cfg = serde_json::json!({"rootfs":{"type":"layers","diff_ids":[l0,l1]},
            "history":[{"created_by":"import"},{"created_by":"ENV A=1","empty_layer":true},{"created_by":"RUN /bin/sh -c x # buildkit"}]});
        std::fs::write(
            d.join("image/overlay2/imagedb/content/sha256").join(&img),
            cfg.to_string(),
        )
        .unwrap();
        let chains = chain_ids(&[l0.clone(), l1.clone()]);
        for (c, cache) in chains.iter().zip(["c0", "c1"]) {
            let ld = d.join("image/overlay2/layerdb/sha256").join(hex_of(c));
            std::fs::create_dir_all(&ld).unwrap();
            std::fs::write(ld.join("cache-id"), cache).unwrap();
        }
        let got = docker_image(&paths, &format!("sha256:{img}")).unwrap();
        assert_eq!(got.layers.len(), 2);
        assert_eq!(got.layers[1].dir, Some(d.join("overlay2/c1/diff")));
        assert_eq!(
            got.layers[1].created_by.as_deref(),
            Some("RUN /bin/sh -c x # buildkit")
        );
        assert_eq!(
            resolve_image_id(&paths, "abababababab").as_deref(),
            Some(format!("sha256:{img}").as_str())
        );
        assert_eq!(resolve_image_id(&paths, "../etc"), None);
        assert_eq!(
            docker_image(&paths, "sha256:ffff"),
            Err(LayerError::NoImage("sha256:ffff".into()))
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
