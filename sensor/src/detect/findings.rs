//! The detection rules: `finding` records from builds, their outbound connections, and the
//! later starts and pushes of the images they made. Each rule is documented in
//! docs/detections.md (meaning, ATT&CK and analytic ids, severity, policy knobs, false positives).
use std::collections::BTreeMap;

use serde_json::{Value, json};

mod starts;

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
mod tests;
