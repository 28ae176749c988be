//! Standalone mode: the local facts and the `IstioMulticloud` objects come
//! from one YAML (or JSON) file, re-read when it changes; status goes to
//! memory (served on `/status`) and, if asked, to a file. It powers the local
//! demo and the tests, and runs the same reconciler as Kubernetes mode.
//!
//! ```yaml
//! cluster:                      # this cluster's facts (LocalFacts)
//!   clusterUUID: 0d5c...
//!   rootCA: |
//!     -----BEGIN CERTIFICATE-----
//!   networkName: network-a
//!   apiHost: api.cluster-a.example:443
//!   ingressGateways: [{address: 127.0.1.1, port: 15443}]
//!   services: [{hostname: foo.abc.svc.cluster.local, ports: [{name: http, port: 80}], readyEndpoints: 2}]
//! objects:                      # IstioMulticloud objects, as kubectl would show them
//! - apiVersion: istio-multicloud.dev/v1alpha1
//!   kind: IstioMulticloud
//!   metadata: {name: cluster-b}
//!   spec: {metadataEndpoint: "https://127.0.2.1:8443/metadata", metadata: {ca: "..."}}
//! ```

use crate::crd::IstioMulticloud;
use crate::facts::LocalFacts;
use crate::sources::{Desired, DesiredPeer};
use anyhow::{bail, Context as _};
use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StandaloneFile {
    cluster: LocalFacts,
    #[serde(default)]
    objects: Vec<IstioMulticloud>,
}

/// Parses a standalone file. Errors name the file's problem.
pub fn parse(text: &str) -> anyhow::Result<Desired> {
    let f: StandaloneFile = serde_saphyr::from_str(text).context("not a valid standalone file (want `cluster:` and `objects:`)")?;
    let mut peers = BTreeMap::new();
    for (i, o) in f.objects.into_iter().enumerate() {
        let Some(name) = o.metadata.name.clone().filter(|n| !n.is_empty()) else {
            bail!("objects[{i}] has no metadata.name");
        };
        let generation = o.metadata.generation.or(Some(1));
        if peers.insert(name.clone(), DesiredPeer { spec: o.spec, generation, status: None }).is_some() {
            bail!("objects[{i}]: IstioMulticloud {name:?} is listed twice");
        }
    }
    Ok(Desired { peers, facts: f.cluster })
}

/// Re-reads `path` whenever its contents change and publishes the result. A
/// file that does not parse is reported (log and `last_error`) and the last
/// good state stays in force.
pub async fn watch_file(path: PathBuf, tx: watch::Sender<Option<Desired>>, last_error: std::sync::Arc<Mutex<Option<String>>>) {
    let mut last: Option<Vec<u8>> = None;
    loop {
        match tokio::fs::read(&path).await {
            Ok(bytes) if last.as_ref() != Some(&bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                match parse(&text) {
                    Ok(d) => {
                        tracing::info!(file = %path.display(), objects = d.peers.len(), "standalone file loaded");
                        *last_error.lock() = None;
                        tx.send_replace(Some(d));
                    }
                    Err(e) => {
                        tracing::error!(file = %path.display(), "standalone file refused, keeping the last good state: {e:#}");
                        *last_error.lock() = Some(format!("{e:#}"));
                    }
                }
                last = Some(bytes);
            }
            Ok(_) => {}
            Err(e) => {
                let msg = format!("cannot read {}: {e}", path.display());
                let mut le = last_error.lock();
                if le.as_deref() != Some(&msg) {
                    tracing::error!("{msg}");
                }
                *le = Some(msg);
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::write_atomically;

    #[test]
    fn a_file_with_facts_and_objects_parses() {
        let d = parse(
            r#"
cluster:
  clusterUUID: 6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a000a
  rootCA: "x"
  networkName: n1
objects:
- apiVersion: istio-multicloud.dev/v1alpha1
  kind: IstioMulticloud
  metadata: {name: b}
  spec: {metadataEndpoint: "https://127.0.2.1:1/metadata"}
"#,
        )
        .unwrap();
        assert_eq!(d.peers["b"].spec.metadata_endpoint, "https://127.0.2.1:1/metadata");
        assert!(d.peers["b"].spec.enable_ingress_gateway, "defaults to true");
        assert_eq!(d.facts.network_name, "n1");
    }

    #[tokio::test]
    async fn the_file_is_re_read_on_change_and_a_bad_edit_keeps_the_last_good_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("standalone.yaml");
        let head = "cluster: {clusterUUID: 6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a000a, rootCA: r, networkName: n}\nobjects:\n";
        let obj = |n: &str| {
            format!("- {{apiVersion: istio-multicloud.dev/v1alpha1, kind: IstioMulticloud, metadata: {{name: {n}}}, spec: {{metadataEndpoint: 'https://{n}/metadata'}}}}\n")
        };
        std::fs::write(&path, format!("{head}{}", obj("b"))).unwrap();
        let (tx, mut rx) = watch::channel(None);
        let err = std::sync::Arc::new(Mutex::new(None));
        tokio::spawn(watch_file(path.clone(), tx, err.clone()));
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow().as_ref().unwrap().peers.len(), 1);
        write_atomically(&path, format!("{head}{}{}", obj("b"), obj("c")).as_bytes()).unwrap();
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow().as_ref().unwrap().peers.keys().collect::<Vec<_>>(), ["b", "c"]);
        write_atomically(&path, b"cluster: [not, a, map]").unwrap();
        for _ in 0..100 {
            if err.lock().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(err.lock().as_deref().unwrap().contains("not a valid standalone file"));
        assert_eq!(rx.borrow().as_ref().unwrap().peers.len(), 2, "the last good state stays");
    }

    #[test]
    fn duplicates_and_unknown_keys_are_refused() {
        let obj =
            "- {apiVersion: istio-multicloud.dev/v1alpha1, kind: IstioMulticloud, metadata: {name: b}, spec: {metadataEndpoint: x}}\n";
        let text = format!("cluster: {{clusterUUID: u, rootCA: r, networkName: n}}\nobjects:\n{obj}{obj}");
        assert!(parse(&text).unwrap_err().to_string().contains("listed twice"));
        assert!(parse("cluster: {clusterUUID: u, rootCA: r, networkName: n}\nobject: []\n").is_err());
    }
}
