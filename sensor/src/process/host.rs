//! What the container runtimes keep on the host's disk: a started container's name and image,
//! and which image id a tag names.
//!
//! Docker: `<docker-root>/containers/<id>/config.v2.json` (`Name`, `Image` = image id,
//! `Config.Image` = the reference asked for) and `<docker-root>/image/<driver>/repositories.json`.
//! containerd (CRI and others): the task bundle's OCI `config.json`, whose annotations the CRI
//! plugin fills (`io.kubernetes.cri.*`).
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Where the host's files are: `/` normally, the host mount when the sensor runs in a container.
#[derive(Clone, Debug)]
pub struct HostPaths {
    pub host_root: PathBuf,
    /// dockerd's `--data-root`.
    pub docker_root: PathBuf,
}

impl Default for HostPaths {
    /// The host's root from `SENSOR_HOST_ROOT`, as /proc lookups take it (`proc::host_root`).
    fn default() -> Self {
        HostPaths {
            host_root: crate::process::proc::host_root(),
            docker_root: PathBuf::from("/var/lib/docker"),
        }
    }
}

impl HostPaths {
    /// `p` (absolute on the host) under `host_root`.
    pub fn host(&self, p: &Path) -> PathBuf {
        self.host_root.join(p.strip_prefix("/").unwrap_or(p))
    }

    fn docker(&self) -> PathBuf {
        self.host(&self.docker_root)
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct DockerContainer {
    pub id: String,
    pub name: Option<String>,
    pub image_id: Option<String>,
    pub image_ref: Option<String>,
    pub running: bool,
    pub started_at: Option<crate::output::record::Timestamp>,
}

fn read_json(p: &Path) -> Option<Value> {
    let bytes = std::fs::read(p).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A Docker container by full id.
pub fn docker_container(paths: &HostPaths, id: &str) -> Option<DockerContainer> {
    if !is_container_id(id) {
        return None;
    }
    let v = read_json(
        &paths
            .docker()
            .join("containers")
            .join(id)
            .join("config.v2.json"),
    )?;
    let s = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
    Some(DockerContainer {
        id: id.to_string(),
        name: s(&v["Name"]).map(|n| n.trim_start_matches('/').to_string()),
        image_id: s(&v["Image"]),
        image_ref: s(&v["Config"]["Image"]),
        running: v["State"]["Running"].as_bool().unwrap_or(false),
        started_at: v["State"]["StartedAt"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| crate::output::record::Timestamp(t.with_timezone(&chrono::Utc))),
    })
}

/// A Docker container by what an API path names it with: full id, unique id prefix, or name.
pub fn docker_container_by_ref(paths: &HostPaths, reference: &str) -> Option<DockerContainer> {
    if let Some(c) = docker_container(paths, reference) {
        return Some(c);
    }
    let dir = std::fs::read_dir(paths.docker().join("containers")).ok()?;
    let want = reference.trim_start_matches('/');
    let mut by_prefix = Vec::new();
    for e in dir.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        if id.starts_with(want) {
            by_prefix.push(id);
        } else if let Some(c) = docker_container(paths, &id)
            && c.name.as_deref() == Some(want)
        {
            return Some(c);
        }
    }
    match by_prefix.as_slice() {
        [one] => docker_container(paths, one),
        _ => None,
    }
}

/// The image id a Docker tag (`name:tag`) names now, from repositories.json.
pub fn docker_image_id(paths: &HostPaths, reference: &str) -> Option<String> {
    let want = crate::lineage::store::normalize_ref(reference);
    let dir = std::fs::read_dir(paths.docker().join("image")).ok()?;
    for driver in dir.flatten() {
        let Some(v) = read_json(&driver.path().join("repositories.json")) else {
            continue;
        };
        let Some(repos) = v["Repositories"].as_object() else {
            continue;
        };
        for tags in repos.values() {
            let Some(tags) = tags.as_object() else {
                continue;
            };
            for (tag, id) in tags {
                if crate::lineage::store::normalize_ref(tag) == want
                    && let Some(id) = id.as_str()
                {
                    return Some(id.to_string());
                }
            }
        }
    }
    None
}

/// The manifest digests Docker recorded for repository `name` (no tag) that point at `image_id`:
/// the `name@sha256:...` entries of repositories.json, which dockerd adds when a push (or pull)
/// of that repository succeeds.
pub fn docker_repo_digests(paths: &HostPaths, name: &str, image_id: &str) -> Vec<String> {
    let want = crate::lineage::store::normalize_ref(&format!("{name}:x"));
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir(paths.docker().join("image")) else {
        return found;
    };
    for driver in dir.flatten() {
        let Some(v) = read_json(&driver.path().join("repositories.json")) else {
            continue;
        };
        let Some(repos) = v["Repositories"].as_object() else {
            continue;
        };
        for refs in repos.values() {
            let Some(refs) = refs.as_object() else {
                continue;
            };
            for (r, id) in refs {
                if let Some((repo, digest)) = r.split_once('@')
                    && id.as_str() == Some(image_id)
                    && crate::lineage::store::normalize_ref(&format!("{repo}:x")) == want
                    && !found.iter().any(|d| d == digest)
                {
                    found.push(digest.to_string());
                }
            }
        }
    }
    found
}

/// When Docker says an image was created (its config's `created`).
pub fn docker_image_created(
    paths: &HostPaths,
    image_id: &str,
) -> Option<crate::output::record::Timestamp> {
    let hex = image_id.strip_prefix("sha256:")?;
    if !is_container_id(hex) {
        return None;
    }
    let dir = std::fs::read_dir(paths.docker().join("image")).ok()?;
    for driver in dir.flatten() {
        let Some(v) = read_json(&driver.path().join("imagedb/content/sha256").join(hex)) else {
            continue;
        };
        return v["created"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| crate::output::record::Timestamp(t.with_timezone(&chrono::Utc)));
    }
    None
}

/// Parents followed from an image to its base (a Dockerfile has at most this many steps).
const MAX_IMAGE_CHAIN: usize = 512;

/// The containers the legacy builder committed into an image and its parents, newest first:
/// the `container` field of each image config in the chain of `parent` links of dockerd's
/// image store. Each RUN step of a legacy build ran in one of them, so the chain ties step
/// containers to the build that wrote the image, whatever the build showed its client.
pub fn docker_image_chain(paths: &HostPaths, image_id: &str) -> Vec<String> {
    let mut containers = Vec::new();
    let Ok(dir) = std::fs::read_dir(paths.docker().join("image")) else {
        return containers;
    };
    for driver in dir.flatten() {
        let db = driver.path().join("imagedb");
        let mut id = image_id.to_string();
        for _ in 0..MAX_IMAGE_CHAIN {
            let Some(hex) = id.strip_prefix("sha256:").filter(|h| is_container_id(h)) else {
                break;
            };
            let Some(config) = read_json(&db.join("content/sha256").join(hex)) else {
                break;
            };
            if let Some(c) = config["container"].as_str().filter(|c| is_container_id(c)) {
                containers.push(c.to_string());
            }
            match std::fs::read_to_string(db.join("metadata/sha256").join(hex).join("parent")) {
                Ok(parent) => id = parent.trim().to_string(),
                Err(_) => break,
            }
        }
        if !containers.is_empty() {
            break;
        }
    }
    containers
}

/// Layers of history kept per image, and characters per `created_by`.
const MAX_HISTORY: usize = 64;
const MAX_CREATED_BY: usize = 512;

/// One image of dockerd's image store.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DockerImage {
    pub id: String,
    pub created: Option<crate::output::record::Timestamp>,
    pub tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// Each history entry's `created_by` (or `comment`), oldest first, bounded.
    pub history: Vec<String>,
    pub parent: Option<String>,
}

fn parse_time(v: &Value) -> Option<crate::output::record::Timestamp> {
    v.as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| crate::output::record::Timestamp(t.with_timezone(&chrono::Utc)))
}

/// What an image config (OCI or Docker) says of its history: each entry's `created_by` (or
/// `comment`), oldest first, build-arg values redacted, bounded.
pub fn image_history(config: &Value) -> Vec<String> {
    config["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .take(MAX_HISTORY)
                .filter_map(|x| x["created_by"].as_str().or_else(|| x["comment"].as_str()))
                .map(|s| {
                    crate::process::redact::redact_history(s)
                        .chars()
                        .take(MAX_CREATED_BY)
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Where buildah and podman (rootful) keep images.
pub const CONTAINERS_STORAGE: &str = "/var/lib/containers/storage";

/// The images of containers-storage (buildah, podman): `overlay-images/images.json`, with the
/// time the store made each (a build's commit, or a pull) and its names. No history: that is
/// in each image's config, which the reconciliation does not need to tell built from unseen.
pub fn containers_images(paths: &HostPaths) -> Vec<DockerImage> {
    let file = paths
        .host(Path::new(CONTAINERS_STORAGE))
        .join("overlay-images/images.json");
    let Some(list) = read_json(&file) else {
        return Vec::new();
    };
    list.as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|i| {
            let hex = i["id"].as_str().filter(|h| is_container_id(h))?;
            Some(DockerImage {
                id: format!("sha256:{hex}"),
                created: parse_time(&i["created"]),
                tags: i["names"]
                    .as_array()
                    .map(|n| {
                        n.iter()
                            .filter_map(|s| s.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
                ..Default::default()
            })
        })
        .collect()
}

/// The id (`sha256:<hex>`) of the newest containers-storage image a reference names
/// (`name:tag`, matched against the store's `localhost/name:tag` and
/// `docker.io/library/name:tag` names too).
pub fn containers_image_id(paths: &HostPaths, reference: &str) -> Option<String> {
    let norm =
        |r: &str| crate::lineage::store::normalize_ref(r.strip_prefix("localhost/").unwrap_or(r));
    let want = norm(reference);
    containers_images(paths)
        .into_iter()
        .filter(|i| i.tags.iter().any(|n| norm(n) == want))
        .max_by_key(|i| i.created.map(|c| c.unix_nanos()))
        .map(|i| i.id)
}

/// Every image in dockerd's image store, with the tags and digests repositories.json gives it.
pub fn docker_images(paths: &HostPaths) -> Vec<DockerImage> {
    let mut images = Vec::new();
    let Ok(dir) = std::fs::read_dir(paths.docker().join("image")) else {
        return images;
    };
    for driver in dir.flatten() {
        let db = driver.path().join("imagedb");
        let Ok(content) = std::fs::read_dir(db.join("content/sha256")) else {
            continue;
        };
        let repos = read_json(&driver.path().join("repositories.json")).unwrap_or(Value::Null);
        for e in content.flatten() {
            let hex = e.file_name().to_string_lossy().into_owned();
            if !is_container_id(&hex) {
                continue;
            }
            let Some(config) = read_json(&e.path()) else {
                continue;
            };
            let id = format!("sha256:{hex}");
            let mut img = DockerImage {
                created: parse_time(&config["created"]),
                history: image_history(&config),
                parent: std::fs::read_to_string(
                    db.join("metadata/sha256").join(&hex).join("parent"),
                )
                .ok()
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty()),
                ..Default::default()
            };
            if let Some(repos) = repos["Repositories"].as_object() {
                for refs in repos.values().filter_map(Value::as_object) {
                    for (r, target) in refs {
                        if target.as_str() != Some(id.as_str()) {
                            continue;
                        }
                        match r.split_once('@') {
                            Some((_, digest)) => {
                                if !img.repo_digests.iter().any(|d| d == digest) {
                                    img.repo_digests.push(digest.to_string());
                                }
                            }
                            None => img.tags.push(r.clone()),
                        }
                    }
                }
            }
            img.id = id;
            images.push(img);
        }
        if !images.is_empty() {
            break;
        }
    }
    images
}

/// Whether dockerd records a registry digest for the image (it was pulled, or pushed).
pub fn docker_image_has_digest(paths: &HostPaths, image_id: &str) -> bool {
    let Ok(dir) = std::fs::read_dir(paths.docker().join("image")) else {
        return false;
    };
    dir.flatten().any(|driver| {
        read_json(&driver.path().join("repositories.json")).is_some_and(|v| {
            v["Repositories"].as_object().is_some_and(|repos| {
                repos.values().filter_map(Value::as_object).any(|refs| {
                    refs.iter()
                        .any(|(r, id)| r.contains('@') && id.as_str() == Some(image_id))
                })
            })
        })
    })
}

/// A containerd task bundle's OCI annotations of interest.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BundleInfo {
    /// `container` or `sandbox` (the pause container of a pod), from the CRI.
    pub container_type: Option<String>,
    pub image_name: Option<String>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub container_name: Option<String>,
}

pub fn bundle_info(paths: &HostPaths, bundle: &Path) -> Option<BundleInfo> {
    let v = read_json(&paths.host(bundle).join("config.json"))?;
    let a = &v["annotations"];
    let get = |k: &str| a[k].as_str().filter(|s| !s.is_empty()).map(str::to_string);
    Some(BundleInfo {
        container_type: get("io.kubernetes.cri.container-type"),
        image_name: get("io.kubernetes.cri.image-name"),
        pod: get("io.kubernetes.cri.sandbox-name"),
        namespace: get("io.kubernetes.cri.sandbox-namespace"),
        container_name: get("io.kubernetes.cri.container-name"),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `SENSOR_HOST_ROOT` is read from the environment: the test runs itself again with it
    /// set (setting it here would race the other tests' reads).
    #[test]
    fn default_paths_honour_sensor_host_root() {
        const NAME: &str = "process::host::tests::default_paths_honour_sensor_host_root";
        if let Some(root) = std::env::var_os("SENSOR_HOST_ROOT") {
            let root = PathBuf::from(root);
            let p = HostPaths::default();
            assert_eq!(p.host_root, root);
            assert_eq!(p.docker(), root.join("var/lib/docker"));
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--test-threads=1"])
            .env("SENSOR_HOST_ROOT", "/host-root-of-a-test")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        assert!(stdout.contains("1 passed"), "{stdout}");
    }

    /// A fake host root with one Docker container and one tag.
    pub(crate) fn fake_docker(
        name: &str,
        id: &str,
        cname: &str,
        image_id: &str,
        image_ref: &str,
    ) -> HostPaths {
        let root = std::env::temp_dir().join(format!("sensor-host-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let c = root.join("var/lib/docker/containers").join(id);
        std::fs::create_dir_all(&c).unwrap();
        std::fs::write(
            c.join("config.v2.json"),
            serde_json::json!({"ID": id, "Name": format!("/{cname}"), "Image": image_id,
                "Config": {"Image": image_ref}, "State": {"Running": true}})
            .to_string(),
        )
        .unwrap();
        let img = root.join("var/lib/docker/image/overlay2");
        std::fs::create_dir_all(&img).unwrap();
        let repo = image_ref.split(':').next().unwrap();
        std::fs::write(
            img.join("repositories.json"),
            serde_json::json!({"Repositories": {repo: {image_ref: image_id}}}).to_string(),
        )
        .unwrap();
        HostPaths {
            host_root: root,
            docker_root: PathBuf::from("/var/lib/docker"),
        }
    }

    #[test]
    fn reads_docker_container_by_id_prefix_and_name() {
        let id = "a".repeat(64);
        let p = fake_docker("read", &id, "web", "sha256:img", "x:1");
        let c = docker_container(&p, &id).unwrap();
        assert_eq!(c.name.as_deref(), Some("web"));
        assert_eq!(c.image_id.as_deref(), Some("sha256:img"));
        assert_eq!(c.image_ref.as_deref(), Some("x:1"));
        assert!(c.running);
        assert_eq!(docker_container_by_ref(&p, "aaaa").unwrap().id, id);
        assert_eq!(docker_container_by_ref(&p, "web").unwrap().id, id);
        assert!(docker_container_by_ref(&p, "nope").is_none());
        assert_eq!(
            docker_image_id(&p, "docker.io/library/x:1").as_deref(),
            Some("sha256:img")
        );
        assert!(docker_repo_digests(&p, "x", "sha256:img").is_empty());
        std::fs::remove_dir_all(&p.host_root).unwrap();
    }

    #[test]
    fn reads_cri_annotations() {
        let root = std::env::temp_dir().join(format!("sensor-host-cri-{}", std::process::id()));
        let b = root.join("run/containerd/io.containerd.runtime.v2.task/k8s.io/abc");
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(
            b.join("config.json"),
            r#"{"annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.image-name":"reg/x:1",
            "io.kubernetes.cri.sandbox-name":"pod-1","io.kubernetes.cri.sandbox-namespace":"ns","io.kubernetes.cri.container-name":"c"}}"#,
        )
        .unwrap();
        let p = HostPaths {
            host_root: root.clone(),
            ..Default::default()
        };
        let i = bundle_info(
            &p,
            Path::new("/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc"),
        )
        .unwrap();
        assert_eq!(i.pod.as_deref(), Some("pod-1"));
        assert_eq!(i.image_name.as_deref(), Some("reg/x:1"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
