//! The in-toto Statement v1 with a SLSA Provenance v1 predicate for one image built on this host
//! (docs/provenance.md says what each field claims and what it cannot).
use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::output::record::{BuildFinished, ImageContents, Timestamp};

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// This project's build type: a build on a host, as an eBPF sensor on that host observed it.
pub const BUILD_TYPE: &str = "https://github.com/sensor/sensor/docs/provenance.md#host-build-v1";
/// Dockerfile text kept in the statement, at most (the digest is always of the whole file).
pub const MAX_DOCKERFILE_TEXT: usize = 64 * 1024;

/// The Dockerfile the client's context held when the build started.
#[derive(Clone, Debug, PartialEq)]
pub struct DockerfileRead {
    /// As the client's mount namespace names it.
    pub path: String,
    pub sha256: String,
    pub text: String,
    pub truncated: bool,
}

/// The daemon that ran the build, as the sensor saw it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DaemonInfo {
    pub exe: Option<String>,
    /// From the daemon's `Server:` response header (`Docker/20.10.24+dfsg1 (linux)`).
    pub server: Option<String>,
}

/// A base image, resolved in the image store.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedBase {
    pub reference: String,
    /// `sha256:<64 hex>` when the store has it.
    pub image_id: Option<String>,
    /// `repo@sha256:...` digests the store lists for it.
    pub repo_digests: Vec<String>,
}

/// Everything a statement is made of.
pub struct StatementInput<'a> {
    pub host: &'a str,
    pub build: &'a BuildFinished,
    pub contents: Option<&'a ImageContents>,
    pub dockerfile: Option<&'a DockerfileRead>,
    pub daemon: &'a DaemonInfo,
    pub bases: &'a [ResolvedBase],
    /// (reference, digest) of pushes seen.
    pub pushes: &'a [(String, String)],
}

fn sha256_digest(id: &str) -> Option<Value> {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| json!({ "sha256": hex.to_ascii_lowercase() }))
}

fn ts(t: &Timestamp) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

/// The statement, or `None` when the build has no full image id.
pub fn statement(i: &StatementInput) -> Option<Value> {
    let b = i.build;
    let image_id = b.image_id.as_deref()?;
    let digest = sha256_digest(image_id)?;
    let mut subject = Vec::new();
    let names: Vec<&String> = if b.tags.is_empty() {
        b.params.tags.iter().collect()
    } else {
        b.tags.iter().collect()
    };
    if names.is_empty() {
        subject.push(json!({ "name": image_id, "digest": digest }));
    }
    for t in names {
        subject.push(json!({ "name": t, "digest": digest }));
    }
    for (reference, d) in i.pushes {
        if let Some(dg) = sha256_digest(d) {
            subject.push(json!({ "name": reference, "digest": dg,
                "annotations": { "kind": "pushed_manifest" } }));
        }
    }

    let mut external = Map::new();
    external.insert("builder".into(), json!(b.builder));
    external.insert("tags".into(), json!(b.params.tags));
    external.insert(
        "build_arg_names".into(),
        json!(b.params.build_args.keys().collect::<Vec<_>>()),
    );
    for (k, v) in [
        ("target", &b.params.target),
        ("platform", &b.params.platform),
        ("remote", &b.params.remote),
        ("dockerfile_name", &b.params.dockerfile),
    ] {
        if let Some(v) = v {
            external.insert(k.into(), json!(v));
        }
    }
    if let Some(d) = i.dockerfile {
        external.insert(
            "dockerfile".into(),
            json!({ "path": d.path, "digest": { "sha256": d.sha256 }, "text": d.text,
                    "text_truncated": d.truncated, "source": "client_context_at_build_start" }),
        );
    }

    let internal = json!({
        "client": serde_json::to_value(&b.client).unwrap_or(Value::Null),
        "partial": b.partial,
        "status": b.status,
        "no_cache": b.params.no_cache,
        "pull": b.params.pull,
    });

    let mut deps = Vec::new();
    for base in i.bases {
        let mut d = Map::new();
        d.insert("name".into(), json!(base.reference));
        if let Some(dg) = base.image_id.as_deref().and_then(sha256_digest) {
            d.insert("digest".into(), dg);
        }
        let mut ann = Map::new();
        ann.insert("kind".into(), json!("base_image"));
        if let Some(id) = &base.image_id {
            ann.insert("image_id".into(), json!(id));
        }
        if !base.repo_digests.is_empty() {
            ann.insert("repo_digests".into(), json!(base.repo_digests));
        }
        d.insert("annotations".into(), Value::Object(ann));
        deps.push(Value::Object(d));
    }
    // URLs a downloader of the build named, by the destination it connected to.
    let mut urls: BTreeMap<(String, u16), String> = BTreeMap::new();
    for l in i.contents.map(|c| c.layers.as_slice()).unwrap_or_default() {
        for f in &l.files {
            if let Some(src) = &f.fetched_from {
                urls.entry((src.dst_addr.clone(), src.dst_port))
                    .or_insert_with(|| src.url.clone());
            }
        }
    }
    for o in b.outbound.iter().filter(|o| o.protocol != "unix") {
        let scheme = if o.protocol == "dns" { "dns" } else { "tcp" };
        let host = if o.dst_addr.contains(':') {
            format!("[{}]", o.dst_addr)
        } else {
            o.dst_addr.clone()
        };
        let uri = urls
            .get(&(o.dst_addr.clone(), o.dst_port))
            .cloned()
            .unwrap_or_else(|| format!("{scheme}://{host}:{}", o.dst_port));
        let mut d = json!({
            "uri": uri,
            "annotations": {
                "kind": "outbound", "protocol": o.protocol, "dst_addr": o.dst_addr,
                "dst_port": o.dst_port, "made_by": o.made_by, "policy": o.policy,
                "count": o.count, "failed": o.failed, "first": ts(&o.first), "last": ts(&o.last),
            }
        });
        if let Some(n) = &o.dns_name {
            d["name"] = json!(n);
            d["annotations"]["dns_name"] = json!(n);
        }
        deps.push(d);
    }

    let mut version = Map::new();
    version.insert("sensor".into(), json!(env!("CARGO_PKG_VERSION")));
    if let Some(s) = &i.daemon.server {
        version.insert("daemon".into(), json!(s));
    }
    let daemon_name = i
        .daemon
        .exe
        .as_deref()
        .or(b
            .client
            .exe
            .as_deref()
            .filter(|_| b.client.transport == "local"))
        .unwrap_or(b.builder.as_str());
    let builder_id = format!(
        "https://github.com/sensor/sensor/docs/provenance.md#builder?host={}&builder={}&daemon={}",
        enc(i.host),
        enc(&b.builder),
        enc(daemon_name)
    );
    let finished = Timestamp::from_unix_nanos(
        b.started
            .unix_nanos()
            .saturating_add((b.duration_ms as i64).saturating_mul(1_000_000)),
    );
    let mut byproducts = Vec::new();
    for l in i.contents.map(|c| c.layers.as_slice()).unwrap_or_default() {
        for f in &l.files {
            let Some(h) = &f.sha256 else { continue };
            let mut ann = json!({ "layer": l.diff_id, "op": f.op, "mode": f.mode,
                "uid": f.uid, "gid": f.gid, "size": f.size });
            if let Some(s) = l.step {
                ann["step"] = json!(s);
            }
            for (k, on) in [
                ("executable", f.executable),
                ("setuid", f.setuid),
                ("outside_policy", f.outside_policy),
            ] {
                if on {
                    ann[k] = json!(true);
                }
            }
            if let Some(src) = &f.fetched_from {
                ann["fetched_from"] = json!(src.url);
            }
            byproducts
                .push(json!({ "name": f.path, "digest": { "sha256": h }, "annotations": ann }));
        }
    }
    let mut run_details = json!({
        "builder": { "id": builder_id, "version": Value::Object(version) },
        "metadata": {
            "invocationId": b.build_id,
            "startedOn": ts(&b.started),
            "finishedOn": ts(&finished),
        },
    });
    if !byproducts.is_empty() {
        run_details["byproducts"] = Value::Array(byproducts);
    }
    let mut build_def = json!({
        "buildType": BUILD_TYPE,
        "externalParameters": Value::Object(external),
        "internalParameters": internal,
    });
    if !deps.is_empty() {
        build_def["resolvedDependencies"] = Value::Array(deps);
    }
    Some(json!({
        "_type": STATEMENT_TYPE,
        "subject": subject,
        "predicateType": PREDICATE_TYPE,
        "predicate": { "buildDefinition": build_def, "runDetails": run_details },
    }))
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testutil::build_finished;
    use crate::output::record::Body;

    #[test]
    fn statement_has_subject_definition_and_run_details() {
        let id = format!("sha256:{}", "ab".repeat(32));
        let Body::BuildFinished(mut b) =
            build_finished("b-1", Some(&id), &[("10.0.0.2", 8080, "unknown")])
        else {
            unreachable!()
        };
        b.tags = vec!["x:1".into()];
        let st = statement(&StatementInput {
            host: "h",
            build: &b,
            contents: None,
            dockerfile: Some(&DockerfileRead {
                path: "/ctx/Dockerfile".into(),
                sha256: "00".repeat(32),
                text: "FROM x\n".into(),
                truncated: false,
            }),
            daemon: &DaemonInfo::default(),
            bases: &[],
            pushes: &[("r/x:1".into(), format!("sha256:{}", "cd".repeat(32)))],
        })
        .unwrap();
        assert_eq!(st["_type"], STATEMENT_TYPE);
        assert_eq!(st["predicateType"], PREDICATE_TYPE);
        assert_eq!(
            st["subject"][0]["digest"]["sha256"].as_str().unwrap().len(),
            64
        );
        assert_eq!(st["subject"].as_array().unwrap().len(), 2);
        let p = &st["predicate"];
        assert_eq!(p["buildDefinition"]["buildType"], BUILD_TYPE);
        assert_eq!(p["runDetails"]["metadata"]["invocationId"], b.build_id);
        assert_eq!(
            p["buildDefinition"]["externalParameters"]["dockerfile"]["text"],
            "FROM x\n"
        );
    }
}
