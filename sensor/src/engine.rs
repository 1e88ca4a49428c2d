//! The stages that derive records from records (build sessions, lineage, findings).
//!
//! The pipeline feeds every record it writes (kernel-derived or derived by an engine) to every
//! engine, in order: `commit` before the record is written, `observe` after; what an engine
//! returns is stamped (id, ts, host), written, and fed on.
use std::collections::BTreeMap;

use crate::output::record::{Body, Record, Timestamp};

pub trait Engine: Send {
    /// Called with each record before it is written: state that a reader of the record may
    /// rely on at once (the lineage on disk of a finished build) is committed here, so a
    /// sensor killed the moment the record is out still has it.
    fn commit(&mut self, _rec: &Record) {}
    /// Look at one record; push derived record bodies to `out`.
    fn observe(&mut self, rec: &Record, out: &mut Vec<Body>);
    /// Called about once a second with the current time (or the replayed stream's time), to
    /// close what timed out.
    fn tick(&mut self, _now: Timestamp, _out: &mut Vec<Body>) {}
    /// Called at shutdown: flush what is still open (e.g. builds marked partial).
    fn finish(&mut self, _now: Timestamp, _out: &mut Vec<Body>) {}
    /// A process that was already running when the sensor started (found in /proc), shown as
    /// the `process_exec` it would have been; never written. Called after `sensor_started`,
    /// parents before children.
    fn seed(&mut self, _rec: &Record, _out: &mut Vec<Body>) {}
    /// The earliest time at which `tick` has something to do before the next regular tick
    /// (e.g. a record held until a deadline); the event loop wakes up for it.
    fn next_deadline(&self) -> Option<Timestamp> {
        None
    }
    /// Counters for `sensor_stats.drops` (e.g. `builds_evicted`), added to the map.
    fn drops(&self, _drops: &mut BTreeMap<String, u64>) {}
}
