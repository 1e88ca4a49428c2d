//! Where dockerd keeps an image's layers (overlay2 driver), verified on dockerd 20.10 for both
//! the legacy builder and BuildKit:
//!
//! - `<root>/image/overlay2/imagedb/content/sha256/<id>`: the image config; `rootfs.diff_ids`
//!   lists the layers bottom up, `history` names what made each (`empty_layer` entries made none);
//! - `<root>/image/overlay2/layerdb/sha256/<chain-id>/cache-id`: the overlay2 directory of the
//!   layer, where chain-id(L0) = diff_id(L0) and chain-id(Ln) = sha256("<chain-id(Ln-1)> <diff_id(Ln)>");
//! - `<root>/overlay2/<cache-id>/diff`: the layer's files, deletions as 0:0 character devices,
//!   replaced directories with the `trusted.overlay.opaque` attribute.
use std::path::{Path, PathBuf};

use base64::Engine as _;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::process::host::HostPaths;

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
    /// History entries marked `empty_layer` right before it, whose changes it may hold.
    pub also_by: Vec<String>,
}

/// An image as its config and layerdb describe it.
#[derive(Clone, Debug, PartialEq)]
pub struct DockerImage {
    pub id: String,
    pub layers: Vec<Layer>,
    /// Bottom layers that are the base image's, when the store says (containers-storage).
    pub base_layers: Option<usize>,
    /// The base image (reference, `sha256:` id) when the store records it (containers-storage:
    /// the manifest's `org.opencontainers.image.base.name` annotation).
    pub base: Option<(String, String)>,
}

/// Where buildah and podman keep images when run as root.
pub const CONTAINERS_STORAGE: &str = "/var/lib/containers/storage";

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

/// An image config's layers, bottom up, each with the history line that made it and the
/// `empty_layer` lines since the previous layer (buildah commits several RUNs into one layer and
/// marks all but the last empty).
fn config_layers(cfg_path: &Path) -> Result<Vec<Layer>, LayerError> {
    let bad = |why: String| LayerError::BadConfig {
        path: cfg_path.display().to_string(),
        why,
    };
    let bytes = std::fs::read(cfg_path).map_err(|e| bad(e.to_string()))?;
    let cfg: Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let diff_ids: Vec<String> = cfg["rootfs"]["diff_ids"]
        .as_array()
        .ok_or_else(|| bad("no rootfs.diff_ids".into()))?
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let mut made: Vec<(Option<String>, Vec<String>)> = Vec::new();
    let mut pending = Vec::new();
    for e in cfg["history"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let by = e["created_by"]
            .as_str()
            .map(crate::process::redact::redact_history);
        if e["empty_layer"].as_bool().unwrap_or(false) {
            pending.extend(by);
        } else {
            made.push((by, std::mem::take(&mut pending)));
        }
    }
    // One history entry per layer when the config is whole; otherwise none is trusted.
    let fits = made.len() == diff_ids.len();
    Ok(diff_ids
        .into_iter()
        .enumerate()
        .map(|(i, diff_id)| {
            let (created_by, also_by) = match (fits, made.get(i)) {
                (true, Some((by, also))) => (by.clone(), also.clone()),
                _ => (None, Vec::new()),
            };
            Layer {
                diff_id,
                dir: None,
                created_by,
                also_by,
            }
        })
        .collect())
}

/// Reads an image's config and finds each layer's directory.
pub fn docker_image(paths: &HostPaths, image_id: &str) -> Result<DockerImage, LayerError> {
    let hex = hex_of(image_id);
    let cfg_path = imagedb(paths).join(hex);
    if !is_hex(hex) || !cfg_path.is_file() {
        return Err(LayerError::NoImage(image_id.to_string()));
    }
    let made = config_layers(&cfg_path)?;
    let layerdb = paths
        .host(&paths.docker_root)
        .join("image/overlay2/layerdb/sha256");
    let overlay = paths.host(&paths.docker_root).join("overlay2");
    let diff_ids: Vec<String> = made.iter().map(|m| m.diff_id.clone()).collect();
    let chains = chain_ids(&diff_ids);
    let layers = made
        .into_iter()
        .zip(&chains)
        .map(|(layer, chain)| Layer {
            dir: std::fs::read_to_string(layerdb.join(hex_of(chain)).join("cache-id"))
                .ok()
                .map(|c| c.trim().to_string())
                .filter(|c| safe_name(c))
                .map(|c| overlay.join(c).join("diff")),
            ..layer
        })
        .collect();
    Ok(DockerImage {
        id: format!("sha256:{hex}"),
        layers,
        base_layers: None,
        base: None,
    })
}

/// A name from a store's metadata that names one directory entry, nothing else.
fn safe_name(c: &str) -> bool {
    !c.is_empty() && !c.contains('/') && c != ".." && c != "."
}

/// containers-storage (buildah, podman): `overlay-images/images.json` names the images
/// (`names`, top `layer`), `overlay-layers/layers.json` their layers (`id`, `parent`),
/// `overlay/<layer id>/diff` holds a layer's files, and the config is the image's big-data
/// item `sha256:<id>`, in the file `overlay-images/<id>/=<base64 of the key>`.
pub fn containers_image(paths: &HostPaths, tags: &[String]) -> Result<DockerImage, LayerError> {
    let root = paths.host(Path::new(CONTAINERS_STORAGE));
    let read = |p: PathBuf| -> Result<Value, LayerError> {
        let bad = |why: String| LayerError::BadConfig {
            path: p.display().to_string(),
            why,
        };
        let bytes = std::fs::read(&p).map_err(|e| bad(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))
    };
    let images = read(root.join("overlay-images/images.json"))?;
    let images = images.as_array().cloned().unwrap_or_default();
    let named = |img: &Value, want: &str| {
        img["names"].as_array().is_some_and(|ns| {
            ns.iter()
                .filter_map(Value::as_str)
                .any(|n| n == want || n.strip_suffix(want).is_some_and(|p| p.ends_with('/')))
        })
    };
    // The newest image a tag names (a tag moves to the newest build).
    let image = images
        .iter()
        .filter(|i| tags.iter().any(|t| named(i, t)))
        .max_by_key(|i| i["created"].as_str().unwrap_or("").to_string())
        .ok_or_else(|| LayerError::NoImage(tags.join(", ")))?;
    let id = image["id"]
        .as_str()
        .filter(|i| is_hex(i))
        .ok_or_else(|| LayerError::NoImage(tags.join(", ")))?;
    let key = format!("sha256:{id}");
    let cfg_path = root.join("overlay-images").join(id).join(format!(
        "={}",
        base64::engine::general_purpose::STANDARD.encode(&key)
    ));
    let made = config_layers(&cfg_path)?;
    let layers_json = read(root.join("overlay-layers/layers.json"))?;
    let parent_of: std::collections::HashMap<&str, Option<&str>> = layers_json
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|l| Some((l["id"].as_str()?, l["parent"].as_str())))
        .collect();
    // The top layer's chain, bottom up.
    let mut chain = Vec::new();
    let mut cur = image["layer"].as_str();
    while let Some(l) = cur {
        if chain.len() > 512 || chain.contains(&l) {
            break;
        }
        chain.push(l);
        cur = parent_of.get(l).copied().flatten();
    }
    chain.reverse();
    // The base: the named image the manifest's annotation names, else the nearest named
    // ancestor image, whose top layer is in the chain.
    let base_name = read(root.join("overlay-images").join(id).join("manifest"))
        .ok()
        .and_then(|m| {
            m["annotations"]["org.opencontainers.image.base.name"]
                .as_str()
                .map(str::to_string)
        });
    let top_of = |i: &Value| {
        i["layer"]
            .as_str()
            .and_then(|l| chain.iter().position(|c| *c == l))
    };
    let base_image = images
        .iter()
        .filter(|i| i["id"] != image["id"] && i["names"].as_array().is_some_and(|n| !n.is_empty()))
        .filter(|i| base_name.as_deref().is_none_or(|b| named(i, b)))
        .filter_map(|i| Some((top_of(i)?, i)))
        .max_by_key(|(pos, _)| *pos);
    let base_layers = base_image.map(|(pos, _)| pos + 1);
    let base = base_image.and_then(|(_, i)| {
        let name = base_name
            .clone()
            .or_else(|| i["names"][0].as_str().map(str::to_string))?;
        Some((name, format!("sha256:{}", i["id"].as_str()?)))
    });
    let layers = made
        .into_iter()
        .enumerate()
        .map(|(n, layer)| Layer {
            dir: chain
                .get(n)
                .filter(|c| safe_name(c))
                .map(|c| root.join("overlay").join(c).join("diff")),
            ..layer
        })
        .collect();
    Ok(DockerImage {
        id: key,
        layers,
        base_layers,
        base,
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

    #[test]
    fn containers_storage_image_by_tag_with_base_and_squashed_history() {
        use base64::Engine as _;
        let root = std::env::temp_dir().join(format!("sensor-cs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let paths = HostPaths {
            host_root: root.clone(),
            docker_root: "/var/lib/docker".into(),
        };
        let s = root.join("var/lib/containers/storage");
        let (base, img) = ("aa".repeat(32), "bb".repeat(32));
        std::fs::create_dir_all(s.join("overlay-images").join(&img)).unwrap();
        std::fs::create_dir_all(s.join("overlay-layers")).unwrap();
        let images = serde_json::json!([
            {"id": base, "names": ["docker.io/library/base:1"], "layer": "L0", "created": "2026-01-01T00:00:00Z"},
            {"id": img, "names": ["localhost/app:1"], "layer": "L1", "created": "2026-01-02T00:00:00Z"},
        ]);
        std::fs::write(s.join("overlay-images/images.json"), images.to_string()).unwrap();
        let layers = serde_json::json!([{"id": "L0"}, {"id": "L1", "parent": "L0"}]);
        std::fs::write(s.join("overlay-layers/layers.json"), layers.to_string()).unwrap();
        let cfg = serde_json::json!({"rootfs": {"diff_ids": ["sha256:d0", "sha256:d1"]},
            "history": [{"created_by": "import"},
                        {"created_by": "/bin/sh -c one", "empty_layer": true},
                        {"created_by": "/bin/sh -c two"}]});
        let key = base64::engine::general_purpose::STANDARD.encode(format!("sha256:{img}"));
        std::fs::write(
            s.join("overlay-images").join(&img).join(format!("={key}")),
            cfg.to_string(),
        )
        .unwrap();
        let manifest = serde_json::json!({"annotations": {"org.opencontainers.image.base.name": "docker.io/library/base:1"}});
        std::fs::write(
            s.join("overlay-images").join(&img).join("manifest"),
            manifest.to_string(),
        )
        .unwrap();

        let got = containers_image(&paths, &["app:1".into()]).unwrap();
        assert_eq!(got.id, format!("sha256:{img}"));
        assert_eq!(got.base_layers, Some(1));
        assert_eq!(
            got.base,
            Some(("docker.io/library/base:1".into(), format!("sha256:{base}")))
        );
        assert_eq!(got.layers[1].dir, Some(s.join("overlay/L1/diff")));
        assert_eq!(got.layers[1].created_by.as_deref(), Some("/bin/sh -c two"));
        assert_eq!(got.layers[1].also_by, vec!["/bin/sh -c one".to_string()]);
        assert!(matches!(
            containers_image(&paths, &["other:1".into()]),
            Err(LayerError::NoImage(_))
        ));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
