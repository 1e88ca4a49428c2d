//! DSSE envelopes (https://github.com/secure-systems-lab/dsse, v1.0) signed with an ed25519
//! key: the signature is over PAE("application/vnd.in-toto+json", statement bytes).
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

#[derive(Debug, thiserror::Error)]
pub enum DsseError {
    #[error("cannot read signing key {path}: {source}")]
    ReadKey {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "signing key {path}: not an ed25519 private key in PKCS#8 PEM (make one with `openssl genpkey -algorithm ed25519 -out {path}`): {why}"
    )]
    BadKey { path: String, why: String },
    #[error("envelope: {0}")]
    Malformed(String),
    #[error("signature does not verify with key {0}")]
    BadSignature(String),
}

/// Pre-Authentication Encoding of DSSE v1.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

pub fn load_key(path: &Path) -> Result<SigningKey, DsseError> {
    let p = path.display().to_string();
    let pem = std::fs::read_to_string(path).map_err(|source| DsseError::ReadKey {
        path: p.clone(),
        source,
    })?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| DsseError::BadKey {
        path: p,
        why: e.to_string(),
    })
}

/// The key id: sha256 of the public key's DER (SubjectPublicKeyInfo), hex.
pub fn key_id(key: &VerifyingKey) -> String {
    match key.to_public_key_der() {
        Ok(der) => hex::encode(Sha256::digest(der.as_bytes())),
        Err(_) => hex::encode(key.as_bytes()),
    }
}

pub fn sign(key: &SigningKey, payload: &[u8]) -> Value {
    let sig = key.sign(&pae(PAYLOAD_TYPE, payload));
    json!({
        "payloadType": PAYLOAD_TYPE,
        "payload": STANDARD.encode(payload),
        "signatures": [{ "keyid": key_id(&key.verifying_key()), "sig": STANDARD.encode(sig.to_bytes()) }],
    })
}

/// Verifies an envelope with `key`; returns the payload.
pub fn verify(envelope: &Value, key: &VerifyingKey) -> Result<Vec<u8>, DsseError> {
    let m = |s: &str| DsseError::Malformed(s.to_string());
    let ptype = envelope["payloadType"]
        .as_str()
        .ok_or_else(|| m("no payloadType"))?;
    let payload = STANDARD
        .decode(
            envelope["payload"]
                .as_str()
                .ok_or_else(|| m("no payload"))?,
        )
        .map_err(|_| m("payload is not base64"))?;
    let sigs = envelope["signatures"]
        .as_array()
        .ok_or_else(|| m("no signatures"))?;
    let msg = pae(ptype, &payload);
    for s in sigs {
        let Some(raw) = s["sig"].as_str().and_then(|b| STANDARD.decode(b).ok()) else {
            continue;
        };
        let Ok(sig) = Signature::from_slice(&raw) else {
            continue;
        };
        if key.verify(&msg, &sig).is_ok() {
            return Ok(payload);
        }
    }
    Err(DsseError::BadSignature(key_id(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_spec_example_and_signatures_verify() {
        // The DSSE spec's test vector for PAE.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let env = sign(&key, b"{\"a\":1}");
        assert_eq!(verify(&env, &key.verifying_key()).unwrap(), b"{\"a\":1}");
        let mut bad = env.clone();
        bad["payload"] = json!(STANDARD.encode(b"{\"a\":2}"));
        assert!(verify(&bad, &key.verifying_key()).is_err());
    }
}
