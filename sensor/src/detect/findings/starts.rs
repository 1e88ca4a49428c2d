//! The rules on what happens to an image after its build: a container started from an image
//! nothing explains or by a client in a container, the deploy-after-build and push-then-start
//! chains, and the executables a build's layers hold (`image_contents`).
use super::*;

impl FindingsEngine {
    /// `container_from_unexplained_image`: the image was made on this host (no registry digest)
    /// and no build record explains it (built while the sensor was stopped, `docker load`,
    /// `import`, `commit`).
    pub(super) fn on_unexplained_image(
        &mut self,
        rec: &Record,
        c: &ContainerStart,
        out: &mut Vec<Body>,
    ) {
        let p = self.policy.current();
        let r = &p.rules.container_from_unexplained_image;
        if !r.enabled || c.image_origin.as_deref() != Some("unexplained") {
            return;
        }
        let mut d = BTreeMap::new();
        d.insert("image".into(), json!(c.image));
        d.insert("runtime".into(), json!(c.runtime));
        d.insert("client".into(), to_value(&c.client));
        let mut ids = vec![rec.id];
        ids.extend(c.evidence.record_ids.iter().copied());
        let f = finding(
            "container_from_unexplained_image",
            r.severity,
            format!(
                "Container {} was started from image {}, made on this host (no registry digest) by no build the sensor saw.",
                c.name.as_deref().unwrap_or(&c.container_id),
                c.image
            ),
            &[T1612, T1610],
            &[AN1261],
            None,
            Some(&c.container_id),
            c.image_id.as_deref(),
            d,
            ids,
        );
        self.emit(f, out);
    }

    /// `container_start_from_container`: a client inside a container asked the runtime to
    /// start another container.
    pub(super) fn on_start_from_container(
        &mut self,
        rec: &Record,
        c: &ContainerStart,
        out: &mut Vec<Body>,
    ) {
        let p = self.policy.current();
        let r = &p.rules.container_start_from_container;
        let Some(from) = c.client.container_id.as_deref().filter(|_| r.enabled) else {
            return;
        };
        let mut d = BTreeMap::new();
        d.insert("client".into(), to_value(&c.client));
        d.insert("image".into(), json!(c.image));
        d.insert("started_container".into(), json!(c.container_id));
        let mut ids = vec![rec.id];
        ids.extend(c.evidence.record_ids.iter().copied());
        let f = finding(
            "container_start_from_container",
            r.severity,
            format!(
                "Container {} (image {}) was started at the request of {} running inside container {}.",
                c.name.as_deref().unwrap_or(&c.container_id),
                c.image,
                describe_client(&c.client),
                c.client.container_name.as_deref().unwrap_or(from),
            ),
            &[T1610],
            &[],
            c.build_id.as_deref(),
            Some(&c.container_id),
            c.image_id.as_deref(),
            d,
            ids,
        );
        self.emit(f, out);
    }

    pub(super) fn on_container_start(
        &mut self,
        rec: &Record,
        c: &ContainerStart,
        out: &mut Vec<Body>,
    ) {
        let Some(build_id) = c.build_id.as_deref() else {
            return;
        };
        let p = self.policy.current();
        let lineage = {
            let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
            c.image_id
                .as_deref()
                .and_then(|i| store.get(i))
                .or_else(|| store.find_by_ref(&c.image))
                .cloned()
        };
        let image_id = c
            .image_id
            .clone()
            .or_else(|| lineage.as_ref().map(|l| l.image_id.clone()));
        let mut base_ids = vec![rec.id];
        base_ids.extend(c.evidence.record_ids.iter().copied());
        if let Some(l) = &lineage
            && l.record_id != 0
        {
            base_ids.push(l.record_id);
        }

        let r = &p.rules.deploy_soon_after_build;
        if r.enabled
            && let Some(secs) = c.seconds_since_build
            && secs <= r.window_secs
        {
            let bad = lineage
                .as_ref()
                .map(|l| l.outbound_not_allowed.clone())
                .unwrap_or_default();
            let mut d = BTreeMap::new();
            d.insert("seconds_since_build".into(), json!(secs));
            d.insert("window_secs".into(), json!(r.window_secs));
            d.insert("image".into(), json!(c.image));
            d.insert("runtime".into(), json!(c.runtime));
            d.insert("client".into(), to_value(&c.client));
            if !bad.is_empty() {
                d.insert("build_outbound_not_allowed".into(), json!(bad));
            }
            let f = finding(
                "deploy_soon_after_build",
                if bad.is_empty() {
                    r.severity
                } else {
                    r.severity_with_outbound
                },
                format!(
                    "Container {} was started from image {} {secs} s after build {build_id} made it on this host{}.",
                    c.name.as_deref().unwrap_or(&c.container_id),
                    c.image,
                    if bad.is_empty() {
                        String::new()
                    } else {
                        format!(", a build that connected to {}", bad[0])
                    }
                ),
                &[T1612, T1610],
                &[AN1261],
                Some(build_id),
                Some(&c.container_id),
                image_id.as_deref(),
                d,
                base_ids.clone(),
            );
            self.emit(f, out);
        }

        let r = &p.rules.build_push_deploy_chain;
        if r.enabled
            && let Some(l) = &lineage
            && let Some(push) = l
                .pushes
                .iter()
                .filter(|ps| {
                    ps.at <= rec.ts
                        && ps.at >= l.built_at
                        && rec.ts.millis_since(&ps.at) / 1000 <= r.window_secs
                })
                .max_by_key(|ps| ps.at)
        {
            let mut d = BTreeMap::new();
            d.insert("pushed_reference".into(), json!(push.reference));
            if let Some(dg) = &push.digest {
                d.insert("pushed_digest".into(), json!(dg));
            }
            d.insert(
                "registry".into(),
                json!(crate::lineage::engine::registry_of(&push.reference)),
            );
            d.insert("image".into(), json!(c.image));
            d.insert(
                "seconds_push_to_start".into(),
                json!(rec.ts.millis_since(&push.at) / 1000),
            );
            let mut ids = base_ids;
            if push.record_id != 0 {
                ids.push(push.record_id);
            }
            let f = finding(
                "build_push_deploy_chain",
                r.severity,
                format!(
                    "Image {} built on this host by build {build_id} was pushed as {} and then started as container {}.",
                    image_id.as_deref().unwrap_or(&c.image),
                    push.reference,
                    c.name.as_deref().unwrap_or(&c.container_id)
                ),
                &[T1612, T1610],
                &[AN0946],
                Some(build_id),
                Some(&c.container_id),
                image_id.as_deref(),
                d,
                ids,
            );
            self.emit(f, out);
        }
    }
}

/// Executables listed at most in one `build_downloaded_executable` finding.
const MAX_FILES: usize = 16;

impl FindingsEngine {
    /// `build_downloaded_executable`: an executable in a layer the build added was fetched from
    /// a destination outside policy (certain: a downloader's argv names the file), or written by
    /// a step that connected outside policy (uncertain, with the step's connections).
    pub(super) fn on_image_contents(
        &mut self,
        rec: &Record,
        c: &ImageContents,
        out: &mut Vec<Body>,
    ) {
        let p = self.policy.current();
        let r = &p.rules.build_downloaded_executable;
        if !r.enabled {
            return;
        }
        let fires = |class: &str| class == DENIED || (class == UNKNOWN && r.include_unknown);
        let mut files = Vec::new();
        let mut any_denied = false;
        let mut first: Option<String> = None;
        // Files with a certain source first: they lead the summary.
        let mut candidates: Vec<(
            &crate::output::record::ImageLayer,
            &crate::output::record::ImageFile,
        )> = c
            .layers
            .iter()
            .flat_map(|l| l.files.iter().map(move |f| (l, f)))
            .filter(|(_, f)| f.executable && f.op != "deleted")
            .collect();
        candidates.sort_by_key(|(_, f)| f.fetched_from.is_none());
        for (l, f) in candidates {
            let (source, class, certain) = match &f.fetched_from {
                Some(src) => (
                    json!({ "url": src.url, "addr": src.dst_addr, "port": src.dst_port,
                                "dns_name": src.dns_name, "pid": src.pid }),
                    src.policy.as_str(),
                    true,
                ),
                // An empty file downloads nothing (buildah leaves empty 0755 mount points
                // for /etc/hosts and the like in the layer).
                None if f.outside_policy && r.include_uncertain && f.size > 0 => {
                    let outside: Vec<&crate::output::record::StepConnection> =
                        l.connections.iter().filter(|x| fires(&x.policy)).collect();
                    let Some(worst) = outside
                        .iter()
                        .find(|x| x.policy == DENIED)
                        .or(outside.first())
                    else {
                        continue;
                    };
                    (to_value(&outside), worst.policy.as_str(), false)
                }
                None => continue,
            };
            if !fires(class) {
                continue;
            }
            any_denied |= class == DENIED;
            if first.is_none() {
                let from = match &f.fetched_from {
                    Some(src) => src.url.clone(),
                    None => "a step that connected outside policy".into(),
                };
                first = Some(format!(
                    "{} (sha256 {}) from {from}",
                    f.path,
                    f.sha256.as_deref().unwrap_or("not computed")
                ));
            }
            if files.len() < MAX_FILES {
                files.push(json!({
                    "path": f.path, "sha256": f.sha256, "size": f.size, "mode": f.mode,
                    "setuid": f.setuid, "step": l.step, "layer": l.diff_id,
                    "source": source, "policy": class, "certain": certain,
                }));
            }
        }
        let Some(first) = first else { return };
        let more = if files.len() > 1 {
            format!(" and {} more executable(s)", files.len() - 1)
        } else {
            String::new()
        };
        let mut d = BTreeMap::new();
        d.insert("files".into(), Value::Array(files));
        let mut ids = vec![rec.id];
        ids.extend(c.evidence.record_ids.iter().copied());
        let f = finding(
            "build_downloaded_executable",
            if any_denied {
                r.severity_denied
            } else {
                r.severity
            },
            format!(
                "Image build {} wrote the executable {first}{more}, outside the policy's allowed registries and mirrors.",
                c.build_id
            ),
            &[T1612],
            &[AN1261],
            Some(&c.build_id),
            None,
            Some(&c.image_id),
            d,
            ids,
        );
        self.emit(f, out);
    }
}
