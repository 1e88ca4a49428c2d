//! `sensor provenance IMAGE`: print the statement kept for an image, its DSSE envelope, or
//! verify the envelope's signature.
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::DecodePublicKey;

use super::dsse::{self, DsseError};
use super::store::{ProvenanceStore, ProvenanceStoreError};

#[derive(Debug, thiserror::Error)]
pub enum ProvenanceCliError {
    #[error(transparent)]
    Store(#[from] ProvenanceStoreError),
    #[error(transparent)]
    Dsse(#[from] DsseError),
    #[error("the statement for {0} is not signed (set `provenance_key` in the sensor's config)")]
    Unsigned(String),
    #[error(
        "no key to verify with: give --public-key FILE, or --config FILE with `provenance_key`"
    )]
    NoKey,
    #[error("public key {path}: not an ed25519 public key in PEM: {why}")]
    BadPublicKey { path: String, why: String },
    #[error("the envelope's payload is not the statement kept for {0}")]
    PayloadMismatch(String),
}

pub struct ProvenanceQuery<'a> {
    pub image: &'a str,
    pub state_dir: &'a Path,
    pub envelope: bool,
    pub verify: bool,
    pub private_key: Option<PathBuf>,
    pub public_key: Option<PathBuf>,
}

fn verifying_key(q: &ProvenanceQuery) -> Result<VerifyingKey, ProvenanceCliError> {
    if let Some(p) = &q.public_key {
        let pem = std::fs::read_to_string(p).map_err(|e| ProvenanceCliError::BadPublicKey {
            path: p.display().to_string(),
            why: e.to_string(),
        })?;
        return VerifyingKey::from_public_key_pem(&pem).map_err(|e| {
            ProvenanceCliError::BadPublicKey {
                path: p.display().to_string(),
                why: e.to_string(),
            }
        });
    }
    let p = q.private_key.as_ref().ok_or(ProvenanceCliError::NoKey)?;
    Ok(dsse::load_key(p)?.verifying_key())
}

/// What to print on stdout.
pub fn provenance(q: &ProvenanceQuery) -> Result<String, ProvenanceCliError> {
    let store = ProvenanceStore::new(q.state_dir);
    let rec = store.find(q.image)?;
    if q.verify {
        let env = rec
            .envelope
            .as_ref()
            .ok_or_else(|| ProvenanceCliError::Unsigned(rec.image_id.clone()))?;
        let key = verifying_key(q)?;
        let payload = dsse::verify(env, &key)?;
        let stated: serde_json::Value = serde_json::from_slice(&payload)
            .map_err(|_| ProvenanceCliError::PayloadMismatch(rec.image_id.clone()))?;
        if stated != rec.statement {
            return Err(ProvenanceCliError::PayloadMismatch(rec.image_id.clone()));
        }
        return Ok(format!(
            "verified: {} (build {}) signed by key {}",
            rec.image_id,
            rec.build_id,
            dsse::key_id(&key)
        ));
    }
    let v = if q.envelope {
        rec.envelope
            .clone()
            .ok_or_else(|| ProvenanceCliError::Unsigned(rec.image_id.clone()))?
    } else {
        rec.statement.clone()
    };
    Ok(serde_json::to_string_pretty(&v).unwrap_or_default())
}
