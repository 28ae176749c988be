//! The federation key kept in a Secret.

use super::{is_status, KubeOptions, FIELD_MANAGER};
use crate::keys::{KeyRing, RotationStep};
use anyhow::{anyhow, bail, Context as _, Result};
use ed25519_dalek::SigningKey;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use multicloud_core::pem;
use std::collections::BTreeMap;

/// The Secret holding the federation private key.
pub const KEY_SECRET_NAME: &str = "istio-multicloud-federation-key";
/// The key inside that Secret (PKCS#8 PEM).
pub const KEY_SECRET_KEY: &str = "private.pem";
/// During a rotation: the staged next key (`rotate-key stage`).
pub const NEXT_KEY: &str = "next.pem";
/// During a rotation: the retired key, still published (`rotate-key promote`).
pub const PREVIOUS_KEY: &str = "previous.pem";
/// When the last rotation step was taken (RFC 3339).
pub const ROTATED_AT_ANNOTATION: &str = "istio-multicloud.dev/key-rotation-step-at";

/// The federation private key in Secret `istio-multicloud-federation-key`
/// (key `private.pem`). Neither the key nor the Secret is ever logged.
pub struct SecretKeyStore {
    api: Api<Secret>,
    namespace: String,
}

impl SecretKeyStore {
    pub fn new(client: kube::Client, opts: &KubeOptions) -> Self {
        Self { api: Api::namespaced(client, &opts.namespace), namespace: opts.namespace.clone() }
    }

    fn what(&self) -> String {
        format!("Secret {}/{KEY_SECRET_NAME}", self.namespace)
    }

    /// Loads the key, or generates one and creates the Secret. If another
    /// replica creates it first, loads theirs.
    pub async fn load_or_generate(&self) -> Result<SigningKey> {
        if let Some(key) = self.load().await? {
            return Ok(key);
        }
        let key = SigningKey::generate(&mut rand_core::OsRng);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(KEY_SECRET_NAME.into()),
                labels: Some(BTreeMap::from([("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into())])),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(KEY_SECRET_KEY.into(), ByteString(pem::ed25519_signing_key_to_pem(&key).into_bytes()))])),
            ..Secret::default()
        };
        match self.api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(secret = %self.what(), "generated a new federation key");
                Ok(key)
            }
            Err(e) if is_status(&e, 409) => {
                self.load().await?.ok_or_else(|| anyhow!("{} vanished right after creation; retry", self.what()))
            }
            // The error is kube's, which never carries the request body.
            Err(e) => {
                Err(e).with_context(|| format!("cannot create {}; grant the agent create on secrets in {}", self.what(), self.namespace))
            }
        }
    }

    /// The key if the Secret exists (never generates one).
    pub async fn load(&self) -> Result<Option<SigningKey>> {
        let what = self.what();
        let Some(secret) =
            self.api.get_opt(KEY_SECRET_NAME).await.with_context(|| format!("cannot read {what}; grant the agent get on secrets"))?
        else {
            return Ok(None);
        };
        let Some(ByteString(bytes)) = secret.data.and_then(|mut d| d.remove(KEY_SECRET_KEY)) else {
            bail!("{what} has no key {KEY_SECRET_KEY}; delete the Secret to have the agent generate a new key (peers must then refetch its public key)");
        };
        let text = String::from_utf8(bytes).map_err(|_| anyhow!("{what} key {KEY_SECRET_KEY} is not UTF-8 PEM"))?;
        // The parse error names the PEM problem, never the key material.
        let key = pem::ed25519_signing_key_from_pem(&text)
            .map_err(|e| anyhow!("{what} key {KEY_SECRET_KEY} is not a PKCS#8 Ed25519 private key: {e}"))?;
        Ok(Some(key))
    }

    /// The key ring: the signing key (generated and the Secret created if
    /// missing) and a rotation's next or previous key.
    pub async fn load_ring_or_generate(&self) -> Result<KeyRing> {
        let current = self.load_or_generate().await?;
        let secret = self.api.get_opt(KEY_SECRET_NAME).await.with_context(|| format!("cannot read {}", self.what()))?;
        match secret {
            Some(s) => ring_of(&self.what(), &s),
            None => Ok(KeyRing::new(current)),
        }
    }

    /// Keeps `tx` in step with the Secret (the Lease holder only: followers
    /// sign nothing). A Secret that does not parse keeps the ring in force.
    pub async fn watch(&self, tx: tokio::sync::watch::Sender<KeyRing>) {
        let what = self.what();
        let stream = super::watch_named(self.api.clone(), KEY_SECRET_NAME, what.clone(), "the keys in force stay; grant list/watch on it");
        let mut stream = std::pin::pin!(stream);
        let fingerprint = |r: &KeyRing| (r.current_pem(), r.additional_pems());
        while let Some(secret) = stream.next().await {
            match ring_of(&what, &secret) {
                Ok(ring) if fingerprint(&ring) != fingerprint(&tx.borrow()) => {
                    tracing::info!(stage = ?ring.stage(), "federation key ring changed: publishing and signing with it");
                    tx.send_replace(ring);
                }
                Ok(_) => {}
                Err(e) => tracing::error!("{e:#}; keeping the keys in force"),
            }
        }
    }

    /// `multicloud-agent rotate-key STEP --kubernetes`: one rotation step on
    /// the Secret, written with its resourceVersion (a concurrent edit
    /// fails rather than being overwritten).
    pub async fn rotate(&self, step: RotationStep, min_wait: std::time::Duration) -> Result<KeyRing> {
        let what = self.what();
        let mut secret = self.api.get(KEY_SECRET_NAME).await.with_context(|| format!("cannot read {what}"))?;
        let ring = ring_of(&what, &secret)?;
        let since = secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ROTATED_AT_ANNOTATION))
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .or_else(|| secret.metadata.creation_timestamp.as_ref().map(|t| std::time::SystemTime::from(t.0)))
            .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
            .unwrap_or_default();
        let new = crate::keys::rotate(&ring, step, since, min_wait)?;
        let data = secret.data.get_or_insert_with(BTreeMap::new);
        let pem_of = |k: &SigningKey| ByteString(pem::ed25519_signing_key_to_pem(k).into_bytes());
        data.insert(KEY_SECRET_KEY.into(), pem_of(&new.current));
        for (name, k) in [(NEXT_KEY, &new.next), (PREVIOUS_KEY, &new.previous)] {
            match k {
                Some(k) => data.insert(name.into(), pem_of(k)),
                None => data.remove(name),
            };
        }
        secret
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(ROTATED_AT_ANNOTATION.into(), humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string());
        self.api
            .replace(KEY_SECRET_NAME, &PostParams::default(), &secret)
            .await
            .with_context(|| format!("cannot write {what} (changed meanwhile? run the step again)"))?;
        Ok(new)
    }
}

/// The ring a key Secret holds. Errors name the data key, never its value.
fn ring_of(what: &str, secret: &Secret) -> Result<KeyRing> {
    let key = |name: &str| -> Result<Option<SigningKey>> {
        let Some(ByteString(bytes)) = secret.data.as_ref().and_then(|d| d.get(name)) else { return Ok(None) };
        let text = std::str::from_utf8(bytes).map_err(|_| anyhow!("{what} key {name} is not UTF-8 PEM"))?;
        pem::ed25519_signing_key_from_pem(text).map(Some).map_err(|e| anyhow!("{what} key {name} is not a PKCS#8 Ed25519 private key: {e}"))
    };
    let current = key(KEY_SECRET_KEY)?.ok_or_else(|| anyhow!("{what} has no key {KEY_SECRET_KEY}"))?;
    Ok(KeyRing { current, next: key(NEXT_KEY)?, previous: key(PREVIOUS_KEY)? })
}
