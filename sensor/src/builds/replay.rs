//! `sensor replay FILE`: the engines run over a recorded NDJSON stream (`sensor run --raw`),
//! printing what they derive, as they would live.
use std::collections::BTreeMap;
use std::io::BufRead;

use thiserror::Error;

use crate::engine::Engine;
use crate::output::record::{Body, Record, SCHEMA_VERSION, Timestamp};

#[derive(Debug, Error)]
pub enum ReplayError {
    #[error("reading the recorded stream")]
    Io(#[source] std::io::Error),
    #[error("line {line} is not a JSON object")]
    NotJson {
        line: usize,
        #[source]
        source: serde_json::Error,
    },
}

/// Records of a recorded stream, in order. Lines of kinds this build of the sensor does not
/// know (a newer recorder) are skipped and counted, by kind.
pub fn read_records(
    reader: impl BufRead,
) -> Result<(Vec<Record>, BTreeMap<String, u64>), ReplayError> {
    let mut records = Vec::new();
    let mut skipped = BTreeMap::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(ReplayError::Io)?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|source| ReplayError::NotJson {
                line: i + 1,
                source,
            })?;
        match serde_json::from_value::<Record>(v.clone()) {
            Ok(r) => records.push(r),
            Err(_) => {
                let kind = v
                    .get("kind")
                    .and_then(|k| k.as_str())
                    .unwrap_or("?")
                    .to_string();
                *skipped.entry(kind).or_default() += 1;
            }
        }
    }
    Ok((records, skipped))
}

/// Runs `engines` over `records` as the live pipeline does: each record goes to every engine,
/// what an engine derives is stamped and fed to every engine in turn; `tick` is called each second of the stream's own time, `finish` at its end.
/// Returns the derived records, with ids continuing after the largest recorded id.
pub fn replay_records(
    records: impl IntoIterator<Item = Record>,
    engines: &mut [&mut dyn Engine],
) -> Vec<Record> {
    let mut derived = Vec::new();
    let mut next_id = 0u64;
    let mut host = String::new();
    let mut last_tick: Option<i64> = None;
    let mut now = Timestamp::from_unix_nanos(0);
    for rec in records {
        next_id = next_id.max(rec.id + 1);
        host.clone_from(&rec.host);
        now = now.max(rec.ts);
        let second = now.unix_nanos() / 1_000_000_000;
        if last_tick.is_some_and(|t| second > t) {
            let mut bodies = Vec::new();
            for e in engines.iter_mut() {
                e.tick(now, &mut bodies);
            }
            feed(bodies, engines, &mut derived, &mut next_id, &host, now);
        }
        if last_tick.is_none_or(|t| second > t) {
            last_tick = Some(second);
        }
        let mut bodies = Vec::new();
        for e in engines.iter_mut() {
            e.observe(&rec, &mut bodies);
        }
        feed(bodies, engines, &mut derived, &mut next_id, &host, now);
    }
    let mut bodies = Vec::new();
    for e in engines.iter_mut() {
        e.finish(now, &mut bodies);
    }
    feed(bodies, engines, &mut derived, &mut next_id, &host, now);
    derived
}

/// Stamps derived bodies and feeds them to every engine (breadth-first, bounded).
fn feed(
    mut bodies: Vec<Body>,
    engines: &mut [&mut dyn Engine],
    derived: &mut Vec<Record>,
    next_id: &mut u64,
    host: &str,
    ts: Timestamp,
) {
    // Derived records can derive more (a build feeds lineage and findings); a bound keeps a
    // misbehaving engine from looping forever.
    let mut rounds = 0;
    while !bodies.is_empty() && rounds < 8 {
        rounds += 1;
        let mut next = Vec::new();
        for body in bodies {
            let rec = Record {
                schema_version: SCHEMA_VERSION,
                id: *next_id,
                ts,
                host: host.to_string(),
                body,
            };
            *next_id += 1;
            for e in engines.iter_mut() {
                e.observe(&rec, &mut next);
            }
            derived.push(rec);
        }
        bodies = next;
    }
}
