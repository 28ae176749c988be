//! The federation key kept in a Secret.

use super::{is_status, KubeOptions, FIELD_MANAGER};
use anyhow::{anyhow, bail, Context as _, Result};
use ed25519_dalek::SigningKey;
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
}
