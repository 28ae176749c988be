//! `check --kubernetes`: the inputs read from the API server.

use crate::crd::IstioMulticloud;
use crate::facts::LocalFacts;
use crate::kube::facts::read_local_facts;
use crate::kube::key_secret::{SecretKeyStore, KEY_SECRET_NAME};
use crate::kube::KubeOptions;
use ed25519_dalek::SigningKey;
use kube::api::Api;

/// Why `check --kubernetes` could not read its inputs: reason, detail, what to do.
pub type CheckInputError = (String, String, String);

/// What `multicloud-agent check --kubernetes PEER` probes with, read the way
/// the agent reads them: the object's spec, this cluster's facts, and the
/// federation key from its Secret (never generated here).
pub async fn check_inputs(
    client: kube::Client,
    opts: &KubeOptions,
    peer: &str,
) -> std::result::Result<(LocalFacts, crate::crd::IstioMulticloudSpec, SigningKey), CheckInputError> {
    let err = |reason: &str, detail: String, hint: &str| (reason.to_string(), detail, hint.to_string());
    let api: Api<IstioMulticloud> = Api::all(client.clone());
    let object = api
        .get_opt(peer)
        .await
        .map_err(|e| {
            err("ApiError", format!("cannot read IstioMulticloud {peer}: {e}"), "check the kubeconfig and RBAC (get on istiomulticlouds)")
        })?
        .ok_or_else(|| err("NotFound", format!("no IstioMulticloud {peer:?}"), "check the name: kubectl get istiomulticlouds"))?;
    let facts = read_local_facts(&client, opts).await.map_err(|e| {
        err("FactsUnavailable", format!("{e:#}"), "the agent reads the same objects: see its log and the flags it runs with")
    })?;
    let key = SecretKeyStore::new(client, opts)
        .load()
        .await
        .map_err(|e| err("KeyInvalid", format!("{e:#}"), "see the message; the agent's Secret holds the federation key"))?
        .ok_or_else(|| {
            err(
                "KeyMissing",
                format!("no Secret {}/{KEY_SECRET_NAME}", opts.namespace),
                "the agent creates it on its first start: is the agent running in this namespace?",
            )
        })?;
    Ok((facts, object.spec, key))
}
