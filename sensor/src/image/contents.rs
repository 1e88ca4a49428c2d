//! An image's contents: the layers a build added, listed with [`walk_layer`], each tied to the
//! step that made it, its files to the connections that fetched them.
use std::path::PathBuf;

use super::downloads::Download;
use super::layers::{self, DockerImage};
use super::provenance::ResolvedBase;
use super::walk::{Bounds, Budget, walk_layer};
use crate::detect::policy::ALLOWED;
use crate::output::record::{
    BuildFinished, BuildStep, Evidence, FetchSource, ImageContents, ImageLayer, OutboundConnection,
    StepConnection,
};
use crate::process::host::HostPaths;
use crate::process::host::{docker_image_id, docker_repo_digests};

/// A downloader one step of the build ran.
#[derive(Clone, Debug, PartialEq)]
pub struct StepDownload {
    pub step: u32,
    pub pid: u32,
    pub argv: Vec<String>,
    pub download: Download,
    /// TCP destinations (`addr`, `port`) the downloader process connected to.
    pub connected: Vec<(String, u16)>,
}

/// The step a history entry's `created_by` names: legacy `/bin/sh -c CMD`, BuildKit
/// `RUN /bin/sh -c CMD # buildkit`; the step's `command` is its argv joined.
fn step_of<'a>(created_by: &str, steps: &'a [BuildStep]) -> Option<&'a BuildStep> {
    let c = created_by.strip_prefix("RUN ").unwrap_or(created_by);
    let c = c.strip_suffix(" # buildkit").unwrap_or(c);
    // A RUN of a build with build args: `|N K=V ... CMD` (values redacted by then).
    let c = match c.strip_prefix('|').and_then(|a| a.split_once(' ')) {
        Some((n, rest)) => match n.parse::<usize>() {
            Ok(n) => rest.splitn(n + 1, ' ').nth(n).unwrap_or(""),
            Err(_) => c,
        },
        None => c,
    };
    if c.contains("#(nop)") {
        return None;
    }
    let mut hits = steps.iter().filter(|s| s.command == c);
    match (hits.next(), hits.next()) {
        (Some(s), None) => Some(s),
        _ => None,
    }
}

fn connections(outbound: &[OutboundConnection], step: u32) -> Vec<StepConnection> {
    outbound
        .iter()
        .filter(|o| o.made_by == step.to_string() && o.protocol != "unix")
        .map(|o| StepConnection {
            dst_addr: o.dst_addr.clone(),
            dst_port: o.dst_port,
            protocol: o.protocol.clone(),
            dns_name: o.dns_name.clone(),
            policy: o.policy.clone(),
        })
        .collect()
}

/// The step's outbound entry that a download's URL names: by address (an IP in the URL) or by
/// the DNS name the address was resolved from, and port; the downloader's own connects must
/// include it when they were seen.
fn source_of<'a>(
    d: &StepDownload,
    outbound: &'a [OutboundConnection],
) -> Option<&'a OutboundConnection> {
    let step = d.step.to_string();
    let mut hits = outbound.iter().filter(|o| {
        o.made_by == step
            && o.protocol == "tcp"
            && o.dst_port == d.download.port
            && (o.dst_addr == d.download.host
                || o.dns_name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(&d.download.host)))
            && (d.connected.is_empty()
                || d.connected
                    .iter()
                    .any(|(a, p)| *a == o.dst_addr && *p == o.dst_port))
    });
    match (hits.next(), hits.next()) {
        (Some(o), None) => Some(o),
        _ => None,
    }
}

pub struct ContentsInput<'a> {
    pub paths: &'a HostPaths,
    pub build: &'a BuildFinished,
    pub downloads: &'a [StepDownload],
    pub bounds: Bounds,
    pub record_id: u64,
}

/// Lists the build's layers. The result always names the build; `error` says what could not
/// be read. Also resolves the base images (for the provenance).
pub fn image_contents(i: &ContentsInput) -> (ImageContents, Vec<ResolvedBase>) {
    let b = i.build;
    let image_id = b.image_id.clone().unwrap_or_default();
    let mut c = ImageContents {
        build_id: b.build_id.clone(),
        image_id: image_id.clone(),
        builder: b.builder.clone(),
        evidence: Evidence {
            record_ids: vec![i.record_id],
            pids: Vec::new(),
        },
        ..Default::default()
    };
    let mut bases: Vec<ResolvedBase> = b
        .base_images
        .iter()
        .map(|base| {
            // BuildKit does not say which image a FROM resolved to: the tag names it now (read
            // right after the build).
            let id = base
                .image_id
                .as_deref()
                .and_then(|id| layers::resolve_image_id(i.paths, id))
                .or_else(|| docker_image_id(i.paths, &base.reference));
            ResolvedBase {
                reference: base.reference.clone(),
                repo_digests: id
                    .as_deref()
                    .map(|id| docker_repo_digests(i.paths, repository(&base.reference), id))
                    .unwrap_or_default(),
                image_id: id,
            }
        })
        .collect();
    let (image, storage) = match b.builder.as_str() {
        "legacy" | "buildkit" => (layers::docker_image(i.paths, &image_id), "docker"),
        // buildah and podman print the image id on their stdout, which the sensor does not
        // read: the build's tag names it in the store.
        "buildah" | "podman" => {
            let tags = if b.tags.is_empty() {
                &b.params.tags
            } else {
                &b.tags
            };
            (
                layers::containers_image(i.paths, tags),
                "containers-storage",
            )
        }
        other => {
            c.error = Some(format!(
                "the layers of {other} builds are not read (dockerd's overlay2 store and containers-storage only)"
            ));
            return (c, bases);
        }
    };
    let image = match image {
        Ok(img) => img,
        Err(e) => {
            c.error = Some(e.to_string());
            return (c, bases);
        }
    };
    c.storage = storage.into();
    c.image_id = image.id.clone();
    if bases.is_empty()
        && let Some((reference, id)) = &image.base
    {
        bases.push(ResolvedBase {
            reference: reference.clone(),
            image_id: Some(id.clone()),
            repo_digests: Vec::new(),
        });
    }
    // The base's layers are a prefix of the image's; the last FROM is the image's base.
    let base_layers = image.base_layers.or_else(|| {
        bases
            .iter()
            .rev()
            .filter_map(|base| base.image_id.as_deref())
            .filter_map(|id| layers::docker_image(i.paths, id).ok())
            .map(|base| layers::shared_prefix(&image, &base))
            .find(|n| *n > 0)
    });
    let base_layers = match base_layers {
        Some(n) => n,
        None => {
            c.error = Some("the base image's layers are not known: every layer is listed".into());
            0
        }
    };
    c.base_layers = base_layers as u32;
    list_layers(&mut c, &image, base_layers, i);
    (c, bases)
}

fn list_layers(c: &mut ImageContents, image: &DockerImage, from: usize, i: &ContentsInput) {
    let b = i.build;
    let mut budget = Budget::new(i.bounds);
    let dirs: Vec<Option<PathBuf>> = image.layers.iter().map(|l| l.dir.clone()).collect();
    for (n, layer) in image.layers.iter().enumerate().skip(from) {
        let step = layer
            .created_by
            .as_deref()
            .and_then(|cb| step_of(cb, &b.steps));
        // Every step whose changes the layer holds: its own and those committed with it.
        let mut steps: Vec<u32> = layer
            .also_by
            .iter()
            .filter_map(|cb| step_of(cb, &b.steps))
            .chain(step)
            .map(|s| s.index)
            .collect();
        steps.dedup();
        let mut out = ImageLayer {
            diff_id: layer.diff_id.clone(),
            created_by: layer.created_by.clone(),
            step: step.map(|s| s.index),
            steps: if steps.len() > 1 {
                steps.clone()
            } else {
                Vec::new()
            },
            connections: steps
                .iter()
                .flat_map(|s| connections(&b.outbound, *s))
                .collect(),
            files: Vec::new(),
        };
        let Some(dir) = layer.dir.as_ref().filter(|d| d.is_dir()) else {
            budget.skip("layer_missing");
            c.layers.push(out);
            continue;
        };
        let lower: Vec<PathBuf> = dirs[..n].iter().rev().flatten().cloned().collect();
        out.files = walk_layer(dir, &lower, &mut budget);
        let outside = out.connections.iter().any(|x| x.policy != ALLOWED);
        let downloads: Vec<&StepDownload> = i
            .downloads
            .iter()
            .filter(|d| steps.contains(&d.step))
            .collect();
        for f in out.files.iter_mut().filter(|f| f.op != "deleted") {
            f.outside_policy = outside;
            // The last downloader that wrote the path wins (it overwrote the earlier ones).
            f.fetched_from = downloads
                .iter()
                .rev()
                .find(|d| writes(&d.download.path, &f.path))
                .and_then(|d| {
                    source_of(d, &b.outbound).map(|o| FetchSource {
                        url: d.download.url.clone(),
                        dst_addr: o.dst_addr.clone(),
                        dst_port: o.dst_port,
                        dns_name: o.dns_name.clone(),
                        policy: o.policy.clone(),
                        pid: d.pid,
                        argv: d.argv.clone(),
                    })
                });
        }
        c.layers.push(out);
    }
    c.entries = budget.entries;
    c.skipped = budget.skipped;
}

/// A reference without its tag or digest (`registry:5000/team/app:1` → `registry:5000/team/app`).
fn repository(reference: &str) -> &str {
    let r = reference.split('@').next().unwrap_or(reference);
    match r.rfind(':') {
        Some(i) if !r[i..].contains('/') => &r[..i],
        _ => r,
    }
}

/// A downloader's output path names the file: the same absolute path, or a relative one that
/// the path ends with (its working directory is not known).
fn writes(out: &str, path: &str) -> bool {
    if out.starts_with('/') {
        normalize(out) == path
    } else {
        let rel = out.trim_start_matches("./");
        path.ends_with(&format!("/{rel}"))
    }
}

fn normalize(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_names_steps_of_both_builders() {
        let steps = vec![
            BuildStep {
                index: 1,
                command: "/bin/sh -c wget -O /x http://h/x".into(),
                ..Default::default()
            },
            BuildStep {
                index: 2,
                command: "/bin/sh -c rm /etc/motd".into(),
                ..Default::default()
            },
        ];
        assert_eq!(
            step_of("/bin/sh -c rm /etc/motd", &steps).map(|s| s.index),
            Some(2)
        );
        assert_eq!(
            step_of("RUN /bin/sh -c wget -O /x http://h/x # buildkit", &steps).map(|s| s.index),
            Some(1)
        );
        assert!(step_of("/bin/sh -c #(nop) COPY file:abc in / ", &steps).is_none());
        assert!(writes("/usr//bin/./x", "/usr/bin/x"));
        assert!(writes("x", "/root/x") && !writes("x", "/root/y"));
        assert_eq!(
            repository("registry:5000/team/app:1"),
            "registry:5000/team/app"
        );
        assert_eq!(repository("registry:5000/app"), "registry:5000/app");
        assert_eq!(repository("app@sha256:ab"), "app");
    }
}
