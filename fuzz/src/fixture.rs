//! The fixed world the targets decide in: cluster B (local) federating with
//! A and C, the keys of the core tests, and a root CA made once with openssl
//! (`fixtures/`, public certificates only).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use multicloud_core::edge::{ApiSettings, Edge, EdgeConfig, PeerKey, SpiffeSettings};
use multicloud_core::meshguard::{MeshPeer, MeshSettings};
use multicloud_core::metadata::{PrivateMetadata, PublicMetadata};
use multicloud_core::pem::ed25519_public_key_to_pem;
use std::sync::OnceLock;

/// A peer (signing key [`A_SEED`]).
pub const A: &str = "6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a000a";
/// This cluster (key seed 2).
pub const B: &str = "6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a000b";
/// A second peer, written in upper case in the configuration (key seed 3).
pub const C: &str = "6F9C1C1E-3B7A-4D6E-9A51-1F1F7C1A000C";
pub const A_SEED: u8 = 1;
pub const C_SEED: u8 = 3;
/// A key no peer holds.
pub const STRANGER_SEED: u8 = 9;
/// The clock the targets start from (Unix seconds).
pub const NOW: i64 = 1_800_000_000;
/// The longest `private-multicluster` token lifetime the fixture accepts.
pub const MAX_PRIVATE_LIFETIME: i64 = 600;
/// The only Secret name peers may read.
pub const ALLOWED_SECRET: &str = "cacerts";
pub const SPIFFE_ID: &str = "spiffe://cluster.local/ns/app/sa/client";

pub const ROOT_P256: &str = include_str!("../fixtures/root-p256.pem");
pub const ROOT_P384: &str = include_str!("../fixtures/root-p384.pem");
pub const ROOT_P521: &str = include_str!("../fixtures/root-p521.pem");
pub const ROOT_RSA: &str = include_str!("../fixtures/root-rsa2048.pem");
pub const ROOT_ED25519: &str = include_str!("../fixtures/root-ed25519.pem");
pub const EC_PUBLIC_KEY: &str = include_str!("../fixtures/ec-p256-public.pem");

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub fn public_key_pem(seed: u8) -> String {
    ed25519_public_key_to_pem(&key(seed).verifying_key())
}

/// A compact JWS of the exact `header` and `claims` bytes, signed by `key`.
pub fn sign_raw(key: &SigningKey, header: &[u8], claims: &[u8]) -> String {
    let mut t = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
    let sig = key.sign(t.as_bytes());
    t.push('.');
    t.push_str(&URL_SAFE_NO_PAD.encode(sig.to_bytes()));
    t
}

/// Core's sample private document, its port's protocol named (as the agent
/// publishes it).
pub fn private_doc() -> PrivateMetadata {
    let mut doc = multicloud_core::metadata::sample_private();
    doc.services[0].ports[0].protocol = Some("HTTP".into());
    doc
}

/// B's configuration: peers A and C, a Secret allow-listed, limits low
/// enough for a short input to reach them, A on the mesh port.
pub fn config() -> EdgeConfig {
    EdgeConfig {
        public: PublicMetadata {
            cluster_uuid: B.into(),
            root_ca: ROOT_P256.into(),
            authn_key_pub: public_key_pem(2),
            additional_authn_keys_pub: Vec::new(),
        },
        private: private_doc(),
        peers: vec![
            PeerKey {
                cluster_uuid: A.into(),
                authn_key_pub: public_key_pem(A_SEED),
                max_api_token_lifetime_seconds: None,
                additional_authn_keys_pub: Vec::new(),
            },
            PeerKey {
                cluster_uuid: C.into(),
                authn_key_pub: public_key_pem(C_SEED),
                max_api_token_lifetime_seconds: None,
                additional_authn_keys_pub: Vec::new(),
            },
        ],
        spiffe: SpiffeSettings::default(),
        max_token_lifetime_seconds: MAX_PRIVATE_LIFETIME,
        public_max_age_seconds: 60,
        api: ApiSettings {
            allowed_secrets: vec![ALLOWED_SECRET.into()],
            requests_per_second: 2,
            burst: 4,
            max_watches: 2,
            ..ApiSettings::default()
        },
        mesh: MeshSettings {
            peers: vec![MeshPeer {
                name: "cluster-a".into(),
                cluster_uuid: A.into(),
                sni: format!("{A}.peer.multicloud"),
                services: vec!["foo.abc.svc.cluster.local".into()],
            }],
        },
    }
}

/// B's compiled edge, built once per process.
pub fn edge() -> &'static Edge {
    static EDGE: OnceLock<Edge> = OnceLock::new();
    EDGE.get_or_init(|| Edge::compile(config()).expect("the fixture configuration compiles"))
}
