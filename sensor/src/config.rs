//! The config file (`sensor run --config FILE`): TOML like the policy, and every `sensor run`
//! flag is also a key, named like the flag with `_` for `-` and plural for repeatable flags
//! (`stats_interval = 60`, `runtime_names = ["podman"]`, `[[sinks]]` tables). Flags given on
//! the command line win over the file. Unknown keys are errors.
//!
//! The keys are read from the flags' own definitions (clap), so a new flag is a new key with
//! the same checks, and a value is validated by the same parser as on the command line.
use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use clap::{ArgAction, Args, Command, FromArgMatches, parser::ValueSource};
use toml::{Table, Value};

use crate::{RunArgs, detect::policy, output::sinks::SinkSpec};

/// Keys of a policy file: a file with only these is checked as a policy.
const POLICY_SECTIONS: &[&str] = &["builders", "outbound", "rules", "lineage"];
/// Flags that are not config keys.
const NOT_KEYS: &[&str] = &["config", "help"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: line {line}{field}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        field: String,
        message: String,
    },
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
}

fn run_command() -> Command {
    RunArgs::augment_args(Command::new("run").no_binary_name(true))
}

/// The config keys, in flag order.
pub fn keys() -> Vec<String> {
    run_command()
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .filter(|id| !NOT_KEYS.contains(&id.as_str()))
        .collect()
}

fn invalid(path: &Path, text: &str, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_path_buf(),
        line: find_key_line(text, key).unwrap_or(0),
        field: format!(" (`{key}`)"),
        message: message.into(),
    }
}

/// The line (from 1) where `key = ...`, `[key]` or `[[key]]` first appears.
fn find_key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            let table = l
                .trim_start_matches('[')
                .trim_end()
                .trim_end_matches(']')
                .trim();
            (l.starts_with('[') && table == key)
                || l.strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

fn parse_toml(text: &str, path: &Path) -> Result<Table, ConfigError> {
    text.parse::<Table>().map_err(|e| {
        let (line, src) = match e.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
                (
                    before.matches('\n').count() + 1,
                    text[line_start..]
                        .lines()
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_string(),
                )
            }
            None => (0, String::new()),
        };
        ConfigError::Invalid {
            path: path.to_path_buf(),
            line,
            field: if src.is_empty() {
                String::new()
            } else {
                format!(" (`{src}`)")
            },
            message: e.message().trim().to_string(),
        }
    })
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Integer(i) => Some(i.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Boolean(b) => Some(b.to_string()),
        Value::Datetime(d) => Some(d.to_string()),
        Value::Array(_) | Value::Table(_) => None,
    }
}

/// A `[[sinks]]` table as the `--sink` text: `type:target?name=..&queue=..`.
fn sink_table_to_spec(t: &Table) -> Result<String, String> {
    let get = |k: &str| t.get(k).and_then(scalar);
    let ty = get("type").ok_or("a sink needs `type` (stdout, file, tcp or unix)")?;
    let target = match ty.as_str() {
        "stdout" => String::new(),
        "file" | "unix" => format!(
            ":{}",
            get("path").ok_or(format!("a {ty} sink needs `path`"))?
        ),
        "tcp" => format!(
            ":{}",
            get("addr").ok_or("a tcp sink needs `addr` (HOST:PORT)")?
        ),
        other => {
            return Err(format!(
                "unknown sink type {other:?}: use stdout, file, tcp or unix"
            ));
        }
    };
    let mut opts = Vec::new();
    for (k, v) in t {
        match k.as_str() {
            "type" | "path" | "addr" => {}
            "name" | "queue" | "max_size" | "keep" | "format" => opts.push(format!(
                "{k}={}",
                scalar(v).ok_or(format!("sink `{k}` must be a single value"))?
            )),
            "kinds" => {
                let list: Vec<String> = match v {
                    Value::Array(a) => a.iter().map(|x| scalar(x).unwrap_or_default()).collect(),
                    other => vec![scalar(other).unwrap_or_default()],
                };
                opts.push(format!("kinds={}", list.join(",")));
            }
            other => {
                return Err(format!(
                    "unknown sink key `{other}` (keys: type, path, addr, name, queue, kinds, max_size, keep, format)"
                ));
            }
        }
    }
    let q = if opts.is_empty() {
        String::new()
    } else {
        format!("?{}", opts.join("&"))
    };
    Ok(format!("{ty}{target}{q}"))
}

/// The config file as `sensor run` arguments, leaving out keys for which `explicit` is true.
fn to_args(
    table: &Table,
    text: &str,
    path: &Path,
    explicit: &dyn Fn(&str) -> bool,
) -> Result<Vec<OsString>, ConfigError> {
    let cmd = run_command();
    let mut out = Vec::new();
    for (key, value) in table {
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id() == key && !NOT_KEYS.contains(&key.as_str()));
        let Some(arg) = arg else {
            return Err(invalid(
                path,
                text,
                key,
                format!("unknown key `{key}` (keys: {})", keys().join(", ")),
            ));
        };
        if explicit(key) {
            continue;
        }
        let Some(long) = arg.get_long() else { continue };
        let flag = format!("--{long}");
        let mut args = Vec::new();
        match arg.get_action() {
            ArgAction::SetTrue => match value {
                Value::Boolean(true) => args.push(flag.clone()),
                Value::Boolean(false) => {}
                _ => return Err(invalid(path, text, key, "expected true or false")),
            },
            ArgAction::Append => {
                let items: Vec<&Value> = match value {
                    Value::Array(a) => a.iter().collect(),
                    v => vec![v],
                };
                for item in items {
                    let v = match item {
                        Value::Table(t) if key == "sinks" => {
                            sink_table_to_spec(t).map_err(|m| invalid(path, text, key, m))?
                        }
                        v => scalar(v)
                            .ok_or_else(|| invalid(path, text, key, "expected a list of values"))?,
                    };
                    args.push(format!("{flag}={v}"));
                }
            }
            _ => {
                let v = scalar(value)
                    .ok_or_else(|| invalid(path, text, key, "expected a single value"))?;
                args.push(format!("{flag}={v}"));
            }
        }
        // Each key checked on its own, by the flag's own parser, so the error names the key.
        if let Err(e) = run_command().try_get_matches_from(&args) {
            let msg = e.to_string();
            let first = msg
                .lines()
                .next()
                .unwrap_or("invalid value")
                .trim_start_matches("error: ")
                .to_string();
            return Err(invalid(path, text, key, first));
        }
        out.extend(args.into_iter().map(OsString::from));
    }
    Ok(out)
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// `sensor run` arguments from the config file at `path` and the command line (`cli`, the
/// arguments after `run`): a flag on the command line wins over the same key in the file.
pub fn merge(path: &Path, cli: &[OsString]) -> Result<RunArgs, ConfigError> {
    let text = read(path)?;
    let table = parse_toml(&text, path)?;
    let given = run_command()
        .try_get_matches_from(cli)
        .map_err(|e| ConfigError::Invalid {
            path: PathBuf::from("(command line)"),
            line: 0,
            field: String::new(),
            message: e.to_string().lines().next().unwrap_or("").to_string(),
        })?;
    let explicit = |id: &str| {
        matches!(
            given.value_source(id),
            Some(ValueSource::CommandLine) | Some(ValueSource::EnvVariable)
        )
    };
    let mut args = to_args(&table, &text, path, &explicit)?;
    args.extend(cli.iter().cloned());
    let m = run_command().try_get_matches_from(&args).map_err(|e| {
        invalid(
            path,
            &text,
            "",
            e.to_string().lines().next().unwrap_or("").to_string(),
        )
    })?;
    RunArgs::from_arg_matches(&m).map_err(|e| invalid(path, &text, "", e.to_string()))
}

/// `sensor config check FILE`: a config file or a policy file (one with only policy
/// sections); `Ok(summary)` or the one-line error.
pub fn check(path: &Path) -> Result<String, ConfigError> {
    let text = read(path)?;
    let table = parse_toml(&text, path)?;
    if !table.is_empty() && table.keys().all(|k| POLICY_SECTIONS.contains(&k.as_str())) {
        return Ok(policy::check_file(path)?);
    }
    let args = to_args(&table, &text, path, &|_| false)?;
    let m = run_command()
        .try_get_matches_from(&args)
        .map_err(|e| invalid(path, &text, "", e.to_string()))?;
    let run = RunArgs::from_arg_matches(&m).map_err(|e| invalid(path, &text, "", e.to_string()))?;
    let sinks: Vec<String> = run.sinks.iter().map(SinkSpec::to_string).collect();
    let mut summary = format!(
        "config {} is valid: sinks {}, metrics {}",
        path.display(),
        if sinks.is_empty() {
            "stdout".to_string()
        } else {
            sinks.join(", ")
        },
        run.metrics_addr
            .map(|a| format!("on {a}"))
            .unwrap_or_else(|| "off".into()),
    );
    if let Some(p) = &run.policy {
        // Relative to the working directory, as `sensor run` reads it.
        summary.push_str(&format!("; {}", policy::check_file(p)?));
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let p =
            std::env::temp_dir().join(format!("sensor-config-{}-{name}.toml", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn every_flag_is_a_key() {
        let keys = keys();
        for k in [
            "raw",
            "stats_interval",
            "host",
            "runtime_names",
            "kinds",
            "sinks",
            "metrics_addr",
            "policy",
            "containerd_sockets",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} not in {keys:?}");
        }
        assert!(!keys.iter().any(|k| k == "config"));
    }

    #[test]
    fn file_values_and_flags_override() {
        let p = write(
            "merge",
            "stats_interval = 5\nraw = true\nruntime_names = [\"podman\"]\nmetrics_addr = \"127.0.0.1:9464\"\n\
             [[sinks]]\ntype = \"file\"\npath = \"/tmp/x.ndjson\"\nmax_size = \"1MiB\"\nkinds = [\"builds\", \"finding\"]\n\
             [[sinks]]\ntype = \"tcp\"\naddr = \"127.0.0.1:5170\"\nformat = \"ocsf\"\n",
        );
        let a = merge(&p, &[]).unwrap();
        assert_eq!(a.sinks[1].format, crate::output::sinks::Format::Ocsf);
        assert_eq!(a.stats_interval, 5);
        assert!(a.raw);
        assert_eq!(a.runtime_names, vec!["podman"]);
        assert_eq!(a.sinks.len(), 2);
        assert_eq!(
            a.sinks[0].kinds,
            vec![
                "build_dockerfile",
                "build_finished",
                "build_started",
                "finding"
            ]
        );
        let a = merge(
            &p,
            &[
                "--stats-interval".into(),
                "7".into(),
                "--runtime-name=x".into(),
            ],
        )
        .unwrap();
        assert_eq!(a.stats_interval, 7);
        assert_eq!(a.runtime_names, vec!["x"]);
        assert_eq!(a.sinks.len(), 2);
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn errors_name_line_and_key() {
        let p = write("unknown", "stats_interval = 5\nstats_intervall = 6\n");
        let e = merge(&p, &[]).unwrap_err().to_string();
        assert!(
            e.contains("line 2") && e.contains("unknown key `stats_intervall`"),
            "{e}"
        );
        let p2 = write("badvalue", "\nringbuf_mib = 3\n");
        let e = check(&p2).unwrap_err().to_string();
        assert!(
            e.contains("line 2") && e.contains("ringbuf_mib") && e.contains("power of two"),
            "{e}"
        );
        let p3 = write("syntax", "raw = true\nstats_interval = = 3\n");
        let e = check(&p3).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let p4 = write("sink", "[[sinks]]\ntype = \"tcp\"\n");
        let e = check(&p4).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("addr"), "{e}");
        for p in [p, p2, p3, p4] {
            let _ = std::fs::remove_file(p);
        }
    }

    #[test]
    fn example_config_is_valid_and_policy_files_are_recognised() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let ok = check(&root.join("deploy/config.example.toml")).unwrap();
        assert!(ok.starts_with("config "), "{ok}");
        let ok = check(&root.join("deploy/policy.example.toml")).unwrap();
        assert!(ok.starts_with("policy "), "{ok}");
    }
}
