//! Correlation and detection (issue 5): image lineage (`container_start`, `image_push`) and
//! `finding` records, from the build sessions and the raw records.
//!
//! Two engines share the persisted [`LineageStore`]: [`LineageEngine`] writes it (built images,
//! their pushes) and derives starts and pushes; [`FindingsEngine`] reads it and applies the
//! policy's rules. The pipeline feeds derived records back to every engine, so the findings
//! engine sees the lineage engine's `container_start` and `image_push` records with their ids.
use std::path::Path;
use std::sync::{Arc, Mutex};

pub mod findings;
pub mod host;
pub mod lineage;
#[cfg(test)]
pub(crate) mod testutil;

pub use findings::FindingsEngine;
pub use host::HostPaths;
pub use lineage::LineageEngine;

use crate::engine::Engine;
use crate::policy::PolicyHandle;
use crate::record::Timestamp;
use crate::store::{LineageStore, StoreError};

/// The lineage store, shared by the two engines (and nothing else).
pub type SharedLineage = Arc<Mutex<LineageStore>>;

/// Opens the store under `state_dir` (`None`: in memory only, for `sensor replay`), with the
/// bounds from the policy's `[lineage]` section.
pub fn open_store(
    policy: &PolicyHandle,
    state_dir: Option<&Path>,
) -> Result<SharedLineage, StoreError> {
    let l = policy.current().lineage.clone();
    let store = match state_dir {
        Some(dir) => LineageStore::open(dir, l.max_images, l.retention_days, Timestamp::now())?,
        None => LineageStore::in_memory(l.max_images, l.retention_days),
    };
    Ok(Arc::new(Mutex::new(store)))
}

/// The detection engines, in the order the pipeline must run them (lineage before findings).
pub fn engines(
    policy: PolicyHandle,
    store: SharedLineage,
    paths: HostPaths,
) -> Vec<Box<dyn Engine>> {
    vec![
        Box::new(LineageEngine::new(paths, store.clone())),
        Box::new(FindingsEngine::new(policy, store)),
    ]
}
