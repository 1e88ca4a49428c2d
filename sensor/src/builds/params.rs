//! Build parameters: the `POST /build` query string, and builder command lines.
use std::collections::BTreeMap;

use crate::output::record::BuildParams;
use crate::process::redact::REDACTED;
use crate::proto::api::Query;

fn truthy(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes")
}

/// Parameters of a `POST /build` request and the builder its query asks for.
#[derive(Debug, Default, PartialEq)]
pub struct BuildRequest {
    pub params: BuildParams,
    /// `buildkit` when the query asks for builder version 2, else `legacy`.
    pub builder: &'static str,
}

/// Parses the query of `POST /build` (see the Engine API's ImageBuild).
pub fn parse_build_query(
    query: &Query,
    content_type: Option<&str>,
    show_build_args: bool,
) -> BuildRequest {
    let mut p = BuildParams::default();
    let mut builder = "legacy";
    for (k, v) in query.pairs() {
        let v = v.clone();
        match k.as_str() {
            "t" if !v.is_empty() => p.tags.push(v),
            "dockerfile" if !v.is_empty() => p.dockerfile = Some(v),
            "remote" if !v.is_empty() => p.remote = Some(v),
            "target" if !v.is_empty() => p.target = Some(v),
            "platform" if !v.is_empty() => p.platform = Some(v),
            "networkmode" if !v.is_empty() => p.network_mode = Some(v),
            "nocache" => p.no_cache = truthy(&v),
            "q" => p.quiet = truthy(&v),
            "pull" => p.pull = !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"),
            "version" if v == "2" => builder = "buildkit",
            "buildargs" => p.build_args = build_args(&v, show_build_args),
            _ => {}
        }
    }
    let tar = content_type.is_some_and(|c| c.to_ascii_lowercase().contains("x-tar"));
    p.context_upload = tar || p.remote.is_none();
    BuildRequest { params: p, builder }
}

/// `buildargs` is a JSON object of name to value (or null). Unparseable input keeps a marker
/// rather than the raw text, which could hold secrets.
fn build_args(json: &str, show: bool) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    match serde_json::from_str::<BTreeMap<String, Option<String>>>(json) {
        Ok(m) => {
            for (k, v) in m {
                let v = match (show, v) {
                    (true, Some(v)) => v,
                    (true, None) => String::new(),
                    (false, _) => REDACTED.to_string(),
                };
                out.insert(k, v);
            }
        }
        Err(_) if json.trim().is_empty() || json.trim() == "{}" => {}
        Err(_) => {
            out.insert("<unparsed>".to_string(), REDACTED.to_string());
        }
    }
    out
}

/// Parameters from a builder's command line (`buildah bud`, `podman build`, `docker build`
/// run by another tool, `buildctl build`). Unknown flags are skipped.
pub fn parse_cli_args(args: &[String], show_build_args: bool) -> BuildParams {
    let mut p = BuildParams {
        context_upload: false,
        ..Default::default()
    };
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with('-') => (f, Some(v.to_string())),
            _ => (a, None),
        };
        let takes = matches!(
            flag,
            "-t" | "--tag"
                | "-f"
                | "--file"
                | "--target"
                | "--platform"
                | "--network"
                | "--build-arg"
                | "--opt"
                | "--output"
                | "--frontend"
                | "--local"
                | "--layers"
        );
        let value = if takes {
            match inline {
                Some(v) => Some(v),
                None => {
                    i += 1;
                    args.get(i).cloned()
                }
            }
        } else {
            inline
        };
        match (flag, value) {
            ("-t" | "--tag", Some(v)) => p.tags.push(v),
            ("-f" | "--file", Some(v)) => p.dockerfile = Some(v),
            ("--target", Some(v)) => p.target = Some(v),
            ("--platform", Some(v)) => p.platform = Some(v),
            ("--network", Some(v)) => p.network_mode = Some(v),
            ("--no-cache", _) => p.no_cache = true,
            // `--pull=never|missing|false` does not ask for a pull; bare `--pull`, `=true`,
            // `=always` and `--pull-always` do.
            ("--pull", v) => {
                p.pull = v.is_none_or(|v| {
                    matches!(v.to_ascii_lowercase().as_str(), "true" | "always" | "1")
                })
            }
            ("--pull-always", _) => p.pull = true,
            ("--build-arg", Some(v)) => {
                let (k, val) = v.split_once('=').unwrap_or((v.as_str(), ""));
                let val = if show_build_args {
                    val.to_string()
                } else {
                    REDACTED.to_string()
                };
                p.build_args.insert(k.to_string(), val);
            }
            // buildctl: --opt build-arg:NAME=V, --opt target=x, --output type=image,name=T
            ("--opt", Some(v)) => {
                if let Some(rest) = v.strip_prefix("build-arg:") {
                    let k = rest.split_once('=').map(|(k, _)| k).unwrap_or(rest);
                    let val = match (show_build_args, rest.split_once('=')) {
                        (true, Some((_, v))) => v.to_string(),
                        (true, None) => String::new(),
                        (false, _) => REDACTED.to_string(),
                    };
                    p.build_args.insert(k.to_string(), val);
                } else if let Some(t) = v.strip_prefix("target=") {
                    p.target = Some(t.to_string());
                } else if let Some(t) = v.strip_prefix("filename=") {
                    p.dockerfile = Some(t.to_string());
                } else if let Some(t) = v.strip_prefix("platform=") {
                    p.platform = Some(t.to_string());
                }
            }
            ("--output", Some(v)) => {
                for kv in v.split(',') {
                    if let Some(n) = kv.strip_prefix("name=") {
                        p.tags.extend(n.split(',').map(str::to_string));
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    p
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pull_flag_values() {
        let pull = |a: &[&str]| parse_cli_args(&v(a), false).pull;
        assert!(!pull(&["bud", "--pull=never", "."]));
        assert!(!pull(&["bud", "--pull=missing", "."]));
        assert!(pull(&["bud", "--pull", "."]));
        assert!(pull(&["bud", "--pull=always", "."]));
        assert!(pull(&["bud", "--pull-always", "."]));
    }
}
