//! Build parameters: the `POST /build` query string, and builder command lines.
use std::collections::BTreeMap;

use crate::record::BuildParams;

/// What the value of a build arg becomes unless the sensor shows build args.
pub const REDACTED: &str = "<redacted>";

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space, as in Go's
/// `url.ParseQuery`). Invalid escapes are kept as written; invalid UTF-8 becomes U+FFFD.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Splits a raw query into decoded (key, value) pairs, in order.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

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
    query: Option<&str>,
    content_type: Option<&str>,
    show_build_args: bool,
) -> BuildRequest {
    let mut p = BuildParams::default();
    let mut builder = "legacy";
    for (k, v) in query_pairs(query.unwrap_or("")) {
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

/// A client's argv with build-arg values replaced by `<redacted>`: `--build-arg K=V`,
/// `--build-arg=K=V`, `--opt build-arg:K=V`, and a `buildargs=` query in a URL (curl).
pub fn redact_argv(argv: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(argv.len());
    let mut next_is_arg = false;
    for a in argv {
        let redact_kv = |kv: &str| match kv.split_once('=') {
            Some((k, _)) => format!("{k}={REDACTED}"),
            None => kv.to_string(),
        };
        if next_is_arg {
            out.push(match a.strip_prefix("build-arg:") {
                Some(kv) => format!("build-arg:{}", redact_kv(kv)),
                None if a.contains('=') => redact_kv(a),
                None => a.clone(),
            });
            next_is_arg = false;
            continue;
        }
        if a == "--build-arg" || a == "--opt" {
            next_is_arg = true;
            out.push(a.clone());
        } else if let Some(kv) = a.strip_prefix("--build-arg=") {
            out.push(format!("--build-arg={}", redact_kv(kv)));
        } else if a.contains("buildargs=") {
            out.push(redact_buildargs_in(a));
        } else {
            out.push(a.clone());
        }
    }
    out
}

/// Percent-encodes a query component (everything but unreserved characters).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Every `buildargs=VALUE` in a query string or URL with the values of its JSON object replaced
/// by `<redacted>` (the names are kept); a value that is not a JSON object becomes `<redacted>`
/// as a whole. Text without `buildargs=` is returned unchanged.
pub fn redact_buildargs_in(s: &str) -> String {
    const KEY: &str = "buildargs=";
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(KEY) {
        let start = i + KEY.len();
        let end = rest[start..]
            .find(['&', '#', ' '])
            .map(|e| start + e)
            .unwrap_or(rest.len());
        out.push_str(&rest[..start]);
        let value = &rest[start..end];
        let redacted = match serde_json::from_str::<BTreeMap<String, Option<String>>>(
            &percent_decode(value),
        ) {
            Ok(m) => {
                let m: BTreeMap<String, &str> = m.into_keys().map(|k| (k, REDACTED)).collect();
                percent_encode(&serde_json::to_string(&m).unwrap_or_default())
            }
            Err(_) if value.is_empty() => String::new(),
            Err(_) => REDACTED.to_string(),
        };
        out.push_str(&redacted);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Programs whose command line may carry `--build-arg K=V` (or `--opt build-arg:K=V`).
const BUILD_COMMANDS: &[&str] = &[
    "docker",
    "buildah",
    "podman",
    "buildctl",
    "nerdctl",
    "docker-buildx",
    "kaniko",
    "executor",
];

/// The argv of a process with build-arg values redacted: builder command lines
/// ([`redact_argv`]) and, in any program, a `buildargs=` query in an argument (a curl URL).
/// `None` when nothing needed redacting.
pub fn redact_exec_argv(argv: &[String]) -> Option<Vec<String>> {
    let prog = argv
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a))
        .unwrap_or("");
    let out: Vec<String> = if BUILD_COMMANDS.contains(&prog) {
        redact_argv(argv)
            .into_iter()
            .map(|a| redact_buildargs_in(&a))
            .collect()
    } else if argv.iter().any(|a| a.contains("buildargs=")) {
        argv.iter().map(|a| redact_buildargs_in(a)).collect()
    } else {
        return None;
    };
    (out != argv).then_some(out)
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn buildargs_values_are_redacted_and_names_kept() {
        let q = "t=x&buildargs=%7B%22TOKEN%22%3A%22hunter2%22%7D&nocache=1";
        let r = redact_buildargs_in(q);
        assert!(!r.contains("hunter2"), "{r}");
        assert!(r.ends_with("&nocache=1"), "{r}");
        let req = parse_build_query(Some(&r), None, true);
        assert_eq!(
            req.params.build_args.get("TOKEN").map(String::as_str),
            Some(REDACTED)
        );
        assert_eq!(
            redact_buildargs_in("buildargs=notjson-hunter2"),
            "buildargs=<redacted>"
        );
        assert_eq!(redact_buildargs_in("t=a&b=c"), "t=a&b=c");
    }

    #[test]
    fn exec_argv_of_builders_and_curl() {
        let d = v(&[
            "/usr/bin/docker",
            "build",
            "--build-arg",
            "SECRET=hunter2",
            "--build-arg=B=x",
            ".",
        ]);
        let r = redact_exec_argv(&d).unwrap();
        assert_eq!(
            r,
            v(&[
                "/usr/bin/docker",
                "build",
                "--build-arg",
                "SECRET=<redacted>",
                "--build-arg=B=<redacted>",
                "."
            ])
        );
        let c = v(&[
            "curl",
            "http://h/v1.41/build?buildargs=%7B%22A%22%3A%22hunter2%22%7D",
        ]);
        assert!(!redact_exec_argv(&c).unwrap().concat().contains("hunter2"));
        // Other programs' `--opt k=v` is left alone.
        assert_eq!(redact_exec_argv(&v(&["mount", "--opt", "a=b"])), None);
        assert_eq!(redact_exec_argv(&v(&["/usr/bin/docker", "ps"])), None);
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
