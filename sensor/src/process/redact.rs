//! Build-arg values out of every record: command lines of builders and `buildargs=` queries
//! (a curl URL, an `api_request` query) keep the names and lose the values, before any record
//! is written or any engine sees it, unless the sensor runs with `--show-build-args`.
use std::collections::BTreeMap;

/// What the value of a build arg becomes unless the sensor shows build args.
pub const REDACTED: &str = "<redacted>";

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

/// Characters a query component keeps as they are (RFC 3986 unreserved).
const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, COMPONENT).to_string()
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
            &crate::proto::api::decode_component(value),
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

/// An image history entry's `created_by` with the build args' values redacted: Docker records a
/// RUN of a build with build args as `|N K1=V1 ... KN=VN /bin/sh -c CMD` (BuildKit prefixes
/// `RUN `), values included. The N tokens after `|N` keep their names. A value with spaces is
/// not quoted there, so only its first word can be told apart: the rest of such a value is
/// left (documented). Always applied: image stores outlive the flag a build ran with.
pub fn redact_history(created_by: &str) -> String {
    let (prefix, rest) = match created_by.strip_prefix("RUN ") {
        Some(r) => ("RUN ", r),
        None => ("", created_by),
    };
    let Some(after) = rest.strip_prefix('|') else {
        return created_by.to_string();
    };
    let Some((n, mut tail)) = after.split_once(' ') else {
        return created_by.to_string();
    };
    let Ok(n) = n.parse::<usize>() else {
        return created_by.to_string();
    };
    let mut out = format!("{prefix}|{n}");
    for _ in 0..n {
        let (tok, next) = tail.split_once(' ').unwrap_or((tail, ""));
        out.push(' ');
        match tok.split_once('=') {
            Some((k, _)) => {
                out.push_str(k);
                out.push('=');
                out.push_str(REDACTED);
            }
            None => out.push_str(tok),
        }
        tail = next;
    }
    if !tail.is_empty() {
        out.push(' ');
        out.push_str(tail);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builds::parse_build_query;
    use crate::proto::api::Query;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn history_build_args_are_redacted() {
        assert_eq!(
            redact_history("RUN |2 SECRET=hunter2 B=x /bin/sh -c test -n \"$SECRET\" # buildkit"),
            "RUN |2 SECRET=<redacted> B=<redacted> /bin/sh -c test -n \"$SECRET\" # buildkit"
        );
        assert_eq!(
            redact_history("|1 TOKEN=t0k /bin/sh -c make"),
            "|1 TOKEN=<redacted> /bin/sh -c make"
        );
        for plain in [
            "/bin/sh -c #(nop) ENV A=1",
            "RUN /bin/sh -c x=1",
            "|x y",
            "",
        ] {
            assert_eq!(redact_history(plain), plain);
        }
    }

    #[test]
    fn buildargs_values_are_redacted_and_names_kept() {
        let q = "t=x&buildargs=%7B%22TOKEN%22%3A%22hunter2%22%7D&nocache=1";
        let r = redact_buildargs_in(q);
        assert!(!r.contains("hunter2"), "{r}");
        assert!(r.ends_with("&nocache=1"), "{r}");
        let req = parse_build_query(&Query::parse(Some(&r)), None, true);
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
}
