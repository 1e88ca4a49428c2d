//! Image lineage: the persisted store of images built on this host (`store`: image id → build,
//! tags, digests, pushes) and the engine that writes it and derives `container_start` and
//! `image_push` records (`engine`). The findings engine (`detect`) reads the same store.
use std::path::Path;
use std::sync::{Arc, Mutex};

pub mod containerd;
pub mod engine;
pub mod store;

pub use engine::LineageEngine;

use crate::detect::policy::PolicyHandle;
use crate::output::record::Timestamp;
use store::{LineageStore, StoreError};

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
