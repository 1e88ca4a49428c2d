//! Predicates on records that say what they found against what they expected, field by field.
//!
//! A field is named by its path, keys and array indexes joined with dots (`client.transport`,
//! `addrs.0`, `steps.1.exit_code`). [`SensorProcess::expect_record`] waits for a record of a
//! kind whose fields all match; when none comes it shows the nearest records of that kind and
//! which of their fields differed, instead of only "no matching record".
//!
//! ```no_run
//! # use std::time::Duration;
//! # use sensor_tests::*;
//! # let sensor = SensorProcess::start(&[]).unwrap();
//! let q = sensor.expect_record(
//!     "dns_query",
//!     &[("query_name", eq("example.test")), ("server_port", eq(53))],
//!     Duration::from_secs(30),
//! );
//! assert_fields(&q, &[("server_addr", starts_with("10."))]);
//! ```

use std::fmt;
use std::time::Duration;

use anyhow::{Result, anyhow};
use serde_json::Value;

use crate::SensorProcess;

/// How many near misses a failure shows.
const NEAREST: usize = 3;
/// How much of a record a failure shows.
const RECORD_CHARS: usize = 1500;

/// What one field must be.
pub enum Expect {
    /// Equal to this value.
    Eq(Value),
    /// An array holding an element equal to this value, or a string holding this substring.
    Contains(Value),
    /// A string starting with this.
    StartsWith(String),
    /// Present and not null.
    Present,
    /// Missing or null.
    Absent,
    /// Whatever the description says, checked by the function.
    Satisfies(String, Box<dyn Fn(&Value) -> bool>),
}

/// The field equals `v`.
pub fn eq(v: impl Into<Value>) -> Expect {
    Expect::Eq(v.into())
}

/// The field is an array holding `v`, or a string holding `v` as a substring.
pub fn contains(v: impl Into<Value>) -> Expect {
    Expect::Contains(v.into())
}

/// The field is a string starting with `prefix`.
pub fn starts_with(prefix: &str) -> Expect {
    Expect::StartsWith(prefix.to_string())
}

/// The field is present and not null.
pub fn present() -> Expect {
    Expect::Present
}

/// The field is missing or null.
pub fn absent() -> Expect {
    Expect::Absent
}

/// The field satisfies `f`; `what` says how, in failure messages ("a positive pid").
pub fn satisfies(what: &str, f: impl Fn(&Value) -> bool + 'static) -> Expect {
    Expect::Satisfies(what.to_string(), Box::new(f))
}

impl Expect {
    pub fn holds(&self, v: &Value) -> bool {
        match self {
            Expect::Eq(want) => v == want,
            Expect::Contains(want) => match (v, want) {
                (Value::Array(items), _) => items.contains(want),
                (Value::String(s), Value::String(sub)) => s.contains(sub.as_str()),
                _ => false,
            },
            Expect::StartsWith(prefix) => v.as_str().is_some_and(|s| s.starts_with(prefix)),
            Expect::Present => !v.is_null(),
            Expect::Absent => v.is_null(),
            Expect::Satisfies(_, f) => f(v),
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Eq(v) => write!(f, "{v}"),
            Expect::Contains(v) => write!(f, "something containing {v}"),
            Expect::StartsWith(p) => write!(f, "a string starting with {p:?}"),
            Expect::Present => write!(f, "a value"),
            Expect::Absent => write!(f, "nothing"),
            Expect::Satisfies(what, _) => write!(f, "{what}"),
        }
    }
}

/// The field at `path` (`a.b.0.c`): `Value::Null` when any step is missing.
pub fn field<'v>(record: &'v Value, path: &str) -> &'v Value {
    static NULL: Value = Value::Null;
    path.split('.')
        .try_fold(record, |v, key| match v {
            Value::Object(m) => m.get(key),
            Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        })
        .unwrap_or(&NULL)
}

/// The fields of `record` that do not hold, one line each: `path: expected X, found Y`.
pub fn mismatches(record: &Value, fields: &[(&str, Expect)]) -> Vec<String> {
    fields
        .iter()
        .filter_map(|(path, want)| {
            let found = field(record, path);
            (!want.holds(found)).then(|| {
                let found = if found.is_null() {
                    "nothing".to_string()
                } else {
                    found.to_string()
                };
                format!("{path}: expected {want}, found {}", clip(&found, 300))
            })
        })
        .collect()
}

/// Whether `record` is of `kind` and every field holds.
pub fn matches(record: &Value, kind: &str, fields: &[(&str, Expect)]) -> bool {
    record["kind"] == kind && fields.iter().all(|(p, want)| want.holds(field(record, p)))
}

/// Panics, listing every field that differs and the record, unless all `fields` hold.
#[track_caller]
pub fn assert_fields(record: &Value, fields: &[(&str, Expect)]) {
    let wrong = mismatches(record, fields);
    assert!(
        wrong.is_empty(),
        "{} of {} fields differ in this {} record:\n  {}\nrecord: {}",
        wrong.len(),
        fields.len(),
        record["kind"],
        wrong.join("\n  "),
        clip(&record.to_string(), RECORD_CHARS)
    );
}

/// The records of `kind` that come nearest to matching `fields` (fewest differing fields, the
/// latest first among equals), each with what differed; or which kinds there were, when none
/// is of `kind`.
pub fn nearest(records: &[Value], kind: &str, fields: &[(&str, Expect)]) -> String {
    let mut of_kind: Vec<(usize, Vec<String>, &Value)> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| r["kind"] == kind)
        .map(|(i, r)| (i, mismatches(r, fields), r))
        .collect();
    if of_kind.is_empty() {
        let mut kinds: Vec<(String, usize)> = Vec::new();
        for r in records {
            let k = r["kind"].as_str().unwrap_or("?").to_string();
            match kinds.iter_mut().find(|(seen, _)| *seen == k) {
                Some((_, n)) => *n += 1,
                None => kinds.push((k, 1)),
            }
        }
        let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} x{n}")).collect();
        return format!(
            "no {kind} record at all among {} records ({})",
            records.len(),
            kinds.join(", ")
        );
    }
    let total = of_kind.len();
    of_kind.sort_by(|a, b| a.1.len().cmp(&b.1.len()).then(b.0.cmp(&a.0)));
    let mut out = format!("{total} {kind} records, the nearest:");
    for (i, wrong, r) in of_kind.iter().take(NEAREST) {
        out.push_str(&format!(
            "\n- record #{} differs in {} of {} fields:\n    {}\n  {}",
            i + 1,
            wrong.len(),
            fields.len(),
            wrong.join("\n    "),
            clip(&r.to_string(), RECORD_CHARS)
        ));
    }
    out
}

fn describe(kind: &str, fields: &[(&str, Expect)]) -> String {
    let fields: Vec<String> = fields.iter().map(|(p, w)| format!("{p} = {w}")).collect();
    format!("{kind} {{{}}}", fields.join(", "))
}

fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}... ({} chars)", &s[..cut], s.len()),
        None => s.to_string(),
    }
}

impl SensorProcess {
    /// Waits up to `timeout` for the first record of `kind` whose `fields` all hold; the error
    /// shows what was expected, the nearest records of that kind and how they differed.
    pub fn try_expect_record(
        &self,
        kind: &str,
        fields: &[(&str, Expect)],
        timeout: Duration,
    ) -> Result<Value> {
        self.wait_for(|r| matches(r, kind, fields), timeout)
            .map_err(|e| {
                anyhow!(
                    "expected {}\n{}\n{e:#}",
                    describe(kind, fields),
                    nearest(&self.records_lenient(), kind, fields)
                )
            })
    }

    /// [`SensorProcess::try_expect_record`], panicking with its report.
    #[track_caller]
    pub fn expect_record(&self, kind: &str, fields: &[(&str, Expect)], timeout: Duration) -> Value {
        self.try_expect_record(kind, fields, timeout)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Watches the records for `within` (those before this call included) and panics, showing
    /// the record, if one of `kind` has all `fields` hold.
    #[track_caller]
    pub fn expect_no_record(&self, kind: &str, fields: &[(&str, Expect)], within: Duration) {
        if let Err(e) = self.expect_none(|r| matches(r, kind, fields), within) {
            panic!("expected no {}\n{e:#}", describe(kind, fields));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec() -> Value {
        json!({"kind": "build_finished", "client": {"transport": "tcp", "pid": 7},
               "tags": ["a:1", "b:2"], "steps": [{"exit_code": 0}], "user_agent": "curl/8"})
    }

    #[test]
    fn paths_reach_objects_and_arrays() {
        let r = rec();
        assert_eq!(field(&r, "client.transport"), "tcp");
        assert_eq!(field(&r, "steps.0.exit_code"), 0);
        assert!(field(&r, "steps.1.exit_code").is_null());
        assert!(field(&r, "client.transport.x").is_null());
    }

    #[test]
    fn every_differing_field_is_named_with_both_values() {
        let r = rec();
        let wrong = mismatches(
            &r,
            &[
                ("client.transport", eq("unix")),
                (
                    "client.pid",
                    satisfies("a positive pid", |v| v.as_u64().is_some_and(|p| p > 0)),
                ),
                ("tags", contains("c:3")),
                ("user_agent", starts_with("curl/")),
                ("error", absent()),
                ("image_id", present()),
            ],
        );
        assert_eq!(
            wrong,
            [
                "client.transport: expected \"unix\", found \"tcp\"",
                "tags: expected something containing \"c:3\", found [\"a:1\",\"b:2\"]",
                "image_id: expected a value, found nothing",
            ]
        );
        assert!(matches(&r, "build_finished", &[("tags", contains("b:2"))]));
        assert!(!matches(&r, "build_started", &[]));
    }

    #[test]
    fn nearest_orders_by_fewest_differences_and_names_missing_kinds() {
        let records = vec![
            json!({"kind": "x", "a": 1, "b": 1}),
            json!({"kind": "x", "a": 2, "b": 2}),
            json!({"kind": "y"}),
        ];
        let report = nearest(&records, "x", &[("a", eq(1)), ("b", eq(2))]);
        assert!(report.starts_with("2 x records, the nearest:"), "{report}");
        let first = report.find("record #2").unwrap();
        let second = report.find("record #1").unwrap();
        assert!(first < second, "{report}");
        assert!(
            nearest(&records, "z", &[]).contains("no z record at all among 3 records (x x2, y x1)")
        );
    }
}
