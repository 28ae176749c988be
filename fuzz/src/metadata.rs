//! The public and private metadata documents (`core::metadata`), parsed as
//! the agent parses a peer's (`serde_json` into the document type, then
//! `validate`).
//!
//! Input: JSON bytes, read as both documents.
//!
//! Properties: nothing panics; a document that parses survives
//! serialize→parse unchanged and validates the same way after it; a valid
//! public document's root bundle and federation key re-encode to the same
//! certificates and key; a valid private document's limits hold and its
//! `meshMode` reads as one of the two modes.

use multicloud_core::metadata::{self, MeshMode, PrivateMetadata, PublicMetadata};
use multicloud_core::pem::{self, CertBundle};

pub fn run(data: &[u8]) {
    if let Ok(doc) = serde_json::from_slice::<PublicMetadata>(data) {
        let again: PublicMetadata = serde_json::from_slice(&serde_json::to_vec(&doc).unwrap()).unwrap();
        assert_eq!(again, doc, "public document does not survive serialize→parse");
        match doc.validate() {
            Ok(valid) => {
                assert!(metadata::is_uuid(&doc.cluster_uuid));
                assert!(again.validate().is_ok());
                assert_eq!(CertBundle::from_pem(&valid.root.to_pem()).as_ref(), Ok(&valid.root));
                assert_eq!(pem::ed25519_public_key_from_pem(&pem::ed25519_public_key_to_pem(&valid.key)), Ok(valid.key));
            }
            Err(e) => assert_eq!(again.validate().err(), Some(e)),
        }
    }
    if let Ok(doc) = serde_json::from_slice::<PrivateMetadata>(data) {
        let again: PrivateMetadata = serde_json::from_slice(&serde_json::to_vec(&doc).unwrap()).unwrap();
        assert_eq!(again, doc, "private document does not survive serialize→parse");
        let verdict = doc.validate();
        assert_eq!(again.validate(), verdict);
        if verdict.is_ok() {
            assert!(doc.ingress_gateways.len() <= metadata::MAX_GATEWAYS);
            assert!(doc.services.len() <= metadata::MAX_SERVICES);
            assert!(doc.ingress_gateways.iter().all(|g| g.port != 0 && metadata::is_host(&g.address)));
            assert!(doc.services.iter().all(|s| (1..=metadata::MAX_PORTS_PER_SERVICE).contains(&s.ports.len())));
            assert!(doc.services.iter().all(|s| s.hostname.parse::<std::net::IpAddr>().is_err()));
            let mode = doc.mesh_mode().expect("a valid document has a mesh mode");
            assert!(matches!(mode, MeshMode::Passthrough | MeshMode::IdentityEnforcing));
            let named: MeshMode = serde_json::from_value(serde_json::Value::String(mode.as_str().into())).unwrap();
            assert_eq!(named, mode);
        }
    }
}
