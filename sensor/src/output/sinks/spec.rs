//! What a sink is, as written on the command line (`--sink file:/var/log/sensor.ndjson?keep=3`)
//! or in the config file (`[[sinks]]` tables, turned into the same text).
use std::{collections::BTreeSet, fmt, path::PathBuf, str::FromStr};

/// Default lines a sink may hold before it drops (`sink_<name>_queue_full`).
pub const DEFAULT_QUEUE: usize = 65_536;
/// Default size at which a file sink rotates.
pub const DEFAULT_MAX_SIZE: u64 = 64 * 1024 * 1024;
/// Default rotated files kept (`FILE.1` .. `FILE.N`).
pub const DEFAULT_KEEP: u32 = 5;

/// Every record kind, as written in the `kind` field (docs/events.md).
pub const KINDS: &[&str] = &[
    "sensor_started",
    "sensor_stats",
    "process_exec",
    "process_fork",
    "process_exit",
    "connect",
    "accept",
    "dns_query",
    "dns_response",
    "file_write",
    "file_content",
    "api_request",
    "api_response",
    "build_started",
    "build_finished",
    "build_dockerfile",
    "container_start",
    "image_push",
    "finding",
    "image_contents",
    "image_provenance",
    "image_discovered",
];

/// Names for groups of kinds, usable wherever kinds are listed.
pub const KIND_GROUPS: &[(&str, &[&str])] = &[
    ("sensor", &["sensor_started", "sensor_stats"]),
    ("process", &["process_exec", "process_fork", "process_exit"]),
    (
        "network",
        &["connect", "accept", "dns_query", "dns_response"],
    ),
    ("api", &["api_request", "api_response"]),
    (
        "builds",
        &["build_started", "build_finished", "build_dockerfile"],
    ),
    (
        "images",
        &[
            "container_start",
            "image_push",
            "image_contents",
            "image_provenance",
            "image_discovered",
        ],
    ),
    ("findings", &["finding"]),
];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    #[error("unknown sink type {0:?}: use stdout, file:PATH, tcp:HOST:PORT or unix:PATH")]
    UnknownType(String),
    #[error("sink {0}: missing its target (file:PATH, tcp:HOST:PORT, unix:PATH)")]
    MissingTarget(String),
    #[error("tcp sink {0:?}: the address must be HOST:PORT")]
    BadAddr(String),
    #[error("unknown record kind {0:?} (kinds: {kinds}; groups: {groups})", kinds = KINDS.join(", "), groups = KIND_GROUPS.iter().map(|g| g.0).collect::<Vec<_>>().join(", "))]
    UnknownKind(String),
    #[error("sink option {0:?}: {1}")]
    BadOption(String, String),
    #[error("size {0:?}: a number of bytes, optionally with K, KiB, M, MiB, G or GiB")]
    BadSize(String),
}

/// Expands kind names and group names into kind names; errors on anything else.
pub fn expand_kinds<S: AsRef<str>>(names: &[S]) -> Result<Vec<String>, SpecError> {
    let mut out = BTreeSet::new();
    for n in names {
        let n = n.as_ref().trim();
        if n.is_empty() {
            continue;
        }
        if let Some((_, kinds)) = KIND_GROUPS.iter().find(|(g, _)| *g == n) {
            out.extend(kinds.iter().map(|k| k.to_string()));
        } else if KINDS.contains(&n) {
            out.insert(n.to_string());
        } else {
            return Err(SpecError::UnknownKind(n.to_string()));
        }
    }
    Ok(out.into_iter().collect())
}

/// A size like `64MiB`, `100K` or `4096`.
pub fn parse_size(s: &str) -> Result<u64, SpecError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| SpecError::BadSize(s.to_string()))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(SpecError::BadSize(s.to_string())),
    };
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| SpecError::BadSize(s.to_string()))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Stdout,
    /// A file rotated at `max_size` bytes into `PATH.1` .. `PATH.<keep>`.
    File {
        path: PathBuf,
        max_size: u64,
        keep: u32,
    },
    /// A TCP stream (`host:port`), reconnected with exponential backoff.
    Tcp {
        addr: String,
    },
    /// A unix stream socket, reconnected with exponential backoff.
    Unix {
        path: PathBuf,
    },
}

impl Target {
    pub fn type_name(&self) -> &'static str {
        match self {
            Target::Stdout => "stdout",
            Target::File { .. } => "file",
            Target::Tcp { .. } => "tcp",
            Target::Unix { .. } => "unix",
        }
    }
}

/// How a sink writes each record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// The sensor's NDJSON records (docs/events.md).
    #[default]
    Ndjson,
    /// One OCSF 1.x event per line (sinks/ocsf.rs, docs/collectors.md#ocsf).
    Ocsf,
}

/// One sink: `TYPE[:TARGET][?name=N&queue=N&kinds=a,b&max_size=64MiB&keep=5&format=ocsf]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkSpec {
    /// Used in drop reasons and metrics (`sink_<name>_queue_full`); defaults to the type.
    pub name: String,
    pub target: Target,
    /// Lines the queue holds.
    pub queue: usize,
    /// Only these kinds (all when empty).
    pub kinds: Vec<String>,
    pub format: Format,
}

impl SinkSpec {
    pub fn stdout() -> Self {
        SinkSpec {
            name: "stdout".into(),
            target: Target::Stdout,
            queue: DEFAULT_QUEUE,
            kinds: Vec::new(),
            format: Format::Ndjson,
        }
    }
}

impl FromStr for SinkSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let (head, query) = match s.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (s, None),
        };
        let (ty, rest) = match head.split_once(':') {
            Some((t, r)) => (t, r),
            None => (head, ""),
        };
        let ty = ty.trim();
        let mut max_size = DEFAULT_MAX_SIZE;
        let mut keep = DEFAULT_KEEP;
        let mut spec = SinkSpec {
            name: ty.to_string(),
            target: Target::Stdout,
            queue: DEFAULT_QUEUE,
            kinds: Vec::new(),
            format: Format::Ndjson,
        };
        for kv in query.unwrap_or("").split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| SpecError::BadOption(kv.into(), "expected key=value".into()))?;
            match k {
                "name" => {
                    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                        return Err(SpecError::BadOption(
                            kv.into(),
                            "letters, digits and _ only".into(),
                        ));
                    }
                    spec.name = v.to_string();
                }
                "queue" => {
                    spec.queue = v.parse().ok().filter(|q| *q > 0).ok_or_else(|| {
                        SpecError::BadOption(kv.into(), "a number of lines > 0".into())
                    })?
                }
                "kinds" => spec.kinds = expand_kinds(&v.split(',').collect::<Vec<_>>())?,
                "max_size" => max_size = parse_size(v)?,
                "keep" => {
                    keep = v
                        .parse()
                        .map_err(|_| SpecError::BadOption(kv.into(), "a number of files".into()))?
                }
                "format" => {
                    spec.format = match v {
                        "ndjson" => Format::Ndjson,
                        "ocsf" => Format::Ocsf,
                        _ => {
                            return Err(SpecError::BadOption(kv.into(), "ndjson or ocsf".into()));
                        }
                    }
                }
                _ => {
                    return Err(SpecError::BadOption(
                        kv.into(),
                        "unknown option (name, queue, kinds, max_size, keep, format)".into(),
                    ));
                }
            }
        }
        let need = |what: &str| {
            if rest.trim().is_empty() {
                Err(SpecError::MissingTarget(what.into()))
            } else {
                Ok(())
            }
        };
        spec.target = match ty {
            "stdout" | "-" => Target::Stdout,
            "file" => {
                need("file")?;
                Target::File {
                    path: PathBuf::from(rest),
                    max_size,
                    keep,
                }
            }
            "tcp" => {
                need("tcp")?;
                match rest.rsplit_once(':') {
                    Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0) => {}
                    _ => return Err(SpecError::BadAddr(rest.into())),
                }
                Target::Tcp {
                    addr: rest.to_string(),
                }
            }
            "unix" => {
                need("unix")?;
                Target::Unix {
                    path: PathBuf::from(rest),
                }
            }
            other => return Err(SpecError::UnknownType(other.into())),
        };
        if ty == "-" {
            spec.name = "stdout".into();
        }
        Ok(spec)
    }
}

impl fmt::Display for SinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Stdout => write!(f, "stdout")?,
            Target::File { path, .. } => write!(f, "file:{}", path.display())?,
            Target::Tcp { addr } => write!(f, "tcp:{addr}")?,
            Target::Unix { path } => write!(f, "unix:{}", path.display())?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One list per fact: every kind a record can have (from the JSON Schema derived from the
    /// record types) is in `KINDS`, and every group names only kinds (`--kinds dns_response`
    /// was refused though the `network` group listed it).
    #[test]
    fn kinds_are_the_record_kinds_and_groups_name_only_kinds() {
        let schema: serde_json::Value =
            serde_json::from_str(&crate::output::schema::records_schema_json()).unwrap();
        let mut from_types: Vec<&str> = schema["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["properties"]["kind"]["const"].as_str().unwrap())
            .collect();
        from_types.sort_unstable();
        let mut listed = KINDS.to_vec();
        listed.sort_unstable();
        assert_eq!(listed, from_types);
        for (group, members) in KIND_GROUPS {
            for m in *members {
                assert!(KINDS.contains(m), "group {group} names unknown kind {m}");
            }
        }
    }

    #[test]
    fn parses_specs() {
        assert_eq!("stdout".parse::<SinkSpec>().unwrap(), SinkSpec::stdout());
        let f: SinkSpec =
            "file:/var/log/s.ndjson?max_size=1MiB&keep=2&kinds=builds,finding&name=archive"
                .parse()
                .unwrap();
        assert_eq!(f.name, "archive");
        assert_eq!(
            f.target,
            Target::File {
                path: "/var/log/s.ndjson".into(),
                max_size: 1 << 20,
                keep: 2
            }
        );
        assert_eq!(
            f.kinds,
            vec![
                "build_dockerfile",
                "build_finished",
                "build_started",
                "finding"
            ]
        );
        let t: SinkSpec = "tcp:127.0.0.1:5170?queue=10".parse().unwrap();
        assert_eq!((t.name.as_str(), t.queue), ("tcp", 10));
        assert_eq!(
            t.target,
            Target::Tcp {
                addr: "127.0.0.1:5170".into()
            }
        );
        assert!(matches!(
            "unix:/run/v.sock".parse::<SinkSpec>().unwrap().target,
            Target::Unix { .. }
        ));
    }

    #[test]
    fn rejects_bad_specs() {
        assert!(matches!(
            "kafka:x".parse::<SinkSpec>(),
            Err(SpecError::UnknownType(_))
        ));
        assert!(matches!(
            "tcp:localhost".parse::<SinkSpec>(),
            Err(SpecError::BadAddr(_))
        ));
        assert!(matches!(
            "file:".parse::<SinkSpec>(),
            Err(SpecError::MissingTarget(_))
        ));
        assert!(matches!(
            "stdout?kinds=bogus".parse::<SinkSpec>(),
            Err(SpecError::UnknownKind(_))
        ));
        assert!(matches!(
            "stdout?color=1".parse::<SinkSpec>(),
            Err(SpecError::BadOption(..))
        ));
        assert!(matches!(
            "file:/x?max_size=12XB".parse::<SinkSpec>(),
            Err(SpecError::BadSize(_))
        ));
    }

    #[test]
    fn format_option() {
        let s: SinkSpec = "tcp:127.0.0.1:5170?format=ocsf&name=siem".parse().unwrap();
        assert_eq!(s.format, Format::Ocsf);
        assert_eq!(SinkSpec::stdout().format, Format::Ndjson);
        assert!(matches!(
            "stdout?format=cef".parse::<SinkSpec>(),
            Err(SpecError::BadOption(..))
        ));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("100K").unwrap(), 100 << 10);
        assert!(parse_size("0").is_err());
        assert!(parse_size("MiB").is_err());
    }
}
