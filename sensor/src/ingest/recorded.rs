//! The other input: records read back from a stream recorded with `sensor run --raw`, for
//! `sensor replay` and the fixture tests (tests/fixtures/*.ndjson). Both feed them to the
//! pipeline's one loop ([`Pipeline::replay`](crate::pipeline::Pipeline::replay)).
use std::{collections::BTreeMap, io::BufRead};

use thiserror::Error;

use crate::output::record::Record;

#[derive(Debug, Error)]
#[error("reading line {line} of the recorded stream")]
pub struct RecordedError {
    line: usize,
    #[source]
    source: std::io::Error,
}

/// The records of a recorded stream, in order, read as they come (stdin may be a live
/// recorder). A line that is not a sensor record is skipped with a warning and counted: by
/// kind when it is a record of a kind this build does not know (a newer recorder), else as
/// not a record at all.
pub struct Recorded<R> {
    lines: std::io::Lines<R>,
    line: usize,
    unknown_kinds: BTreeMap<String, u64>,
    not_records: u64,
}

impl<R: BufRead> Recorded<R> {
    pub fn new(reader: R) -> Self {
        Recorded {
            lines: reader.lines(),
            line: 0,
            unknown_kinds: BTreeMap::new(),
            not_records: 0,
        }
    }

    /// Lines skipped as records of kinds this build does not know, by kind.
    pub fn unknown_kinds(&self) -> &BTreeMap<String, u64> {
        &self.unknown_kinds
    }

    /// Lines skipped as not sensor records at all (counted as `replay_bad_line`).
    pub fn not_records(&self) -> u64 {
        self.not_records
    }
}

impl<R: BufRead> Iterator for Recorded<R> {
    type Item = Result<Record, RecordedError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.line += 1;
            let line = match self.lines.next()? {
                Ok(l) => l,
                Err(source) => {
                    let line = self.line;
                    return Some(Err(RecordedError { line, source }));
                }
            };
            if line.trim().is_empty() {
                continue;
            }
            let e = match serde_json::from_str::<Record>(&line) {
                Ok(rec) => return Some(Ok(rec)),
                Err(e) => e,
            };
            let kind = serde_json::from_str::<serde_json::Value>(&line)
                .ok()
                .and_then(|v| v.get("kind")?.as_str().map(str::to_string));
            let known = kind
                .as_deref()
                .is_some_and(|k| k.parse::<crate::output::record::Kind>().is_ok());
            match kind {
                Some(kind) if !known => {
                    tracing::warn!("line {}: a record of unknown kind {kind:?}", self.line);
                    *self.unknown_kinds.entry(kind).or_default() += 1;
                }
                _ => {
                    tracing::warn!("line {}: not a sensor record: {e}", self.line);
                    self.not_records += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_and_counts_what_is_not_a_record() {
        let text = "\n{\"kind\":\"from_the_future\"}\nnot json\n{\"kind\":\"process_exec\"}\n";
        let mut r = Recorded::new(text.as_bytes());
        assert_eq!(r.by_ref().filter_map(Result::ok).count(), 0);
        assert_eq!(r.unknown_kinds().get("from_the_future"), Some(&1));
        // A known kind with its fields missing is broken, not from a newer recorder.
        assert_eq!(r.not_records(), 2);
    }
}
