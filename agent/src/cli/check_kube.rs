//! `check --kubernetes`: the inputs read from the API server.

use crate::crd::IstioMulticloud;
use crate::facts::LocalFacts;
use crate::kube::facts::read_local_facts;
use crate::kube::key_secret::{SecretKeyStore, KEY_SECRET_NAME};
use crate::kube::KubeOptions;
use ed25519_dalek::SigningKey;
use kube::api::Api;

/// What `check` probes with: this cluster's facts, the peer's object spec
/// and this cluster's federation key.
#[derive(Debug, Clone)]
pub struct CheckInputs {
    pub facts: LocalFacts,
    pub spec: crate::crd::IstioMulticloudSpec,
    pub key: SigningKey,
}

/// Why `check --kubernetes` could not read its inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckInputError {
    /// CamelCase, as the failed step's reason.
    pub reason: String,
    pub detail: String,
    /// What to do.
    pub hint: String,
}

impl CheckInputError {
    pub fn new(reason: &str, detail: String, hint: &str) -> CheckInputError {
        CheckInputError { reason: reason.to_string(), detail, hint: hint.to_string() }
    }
}

/// What `multicloud-agent check --kubernetes PEER` probes with, read the way
/// the agent reads them: the object's spec, this cluster's facts, and the
/// federation key from its Secret (never generated here).
pub async fn check_inputs(client: kube::Client, opts: &KubeOptions, peer: &str) -> Result<CheckInputs, CheckInputError> {
    let err = CheckInputError::new;
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
    Ok(CheckInputs { facts, spec: object.spec, key })
}
