//! Correlation and detection (issue 5): image lineage (`container_start`, `image_push`) and
//! `finding` records, from the build sessions and the raw records.
//!
//! Two engines share the persisted [`LineageStore`](crate::lineage::store::LineageStore):
//! [`LineageEngine`] writes it (built images, their pushes) and derives starts and pushes;
//! [`FindingsEngine`] reads it and applies the policy's rules. The pipeline feeds derived
//! records back to every engine, so the findings engine sees the lineage engine's
//! `container_start` and `image_push` records with their ids.
pub mod findings;
pub mod policy;
#[cfg(test)]
pub(crate) mod testutil;

pub use findings::FindingsEngine;

use crate::engine::Engine;
use crate::lineage::{LineageEngine, SharedLineage, containerd};
use crate::process::host::HostPaths;
use policy::PolicyHandle;

/// The detection engines, in the order the pipeline must run them (lineage before findings);
/// `containerd`: the thread reading containerd for this run, if any.
pub fn engines(
    policy: PolicyHandle,
    store: SharedLineage,
    paths: HostPaths,
    containerd: Option<containerd::ContainerdLink>,
) -> Vec<Box<dyn Engine>> {
    vec![
        Box::new(LineageEngine::new(paths, store.clone()).with_containerd(containerd)),
        Box::new(FindingsEngine::new(policy, store)),
    ]
}
