//! The Istio remote secret: for every established peer that publishes an
//! `apiHost`, a kubeconfig that reaches the peer's API server through the
//! peer's gateway (its API proxy), authenticated with a federation token of
//! `scope: api` (`sub` = this cluster, `aud` = the peer), re-issued when a
//! third of its lifetime remains (checked on every reconcile and on a timer).
//!
//! Standalone mode writes `<dir>/<object>.kubeconfig` (mode 0600).
//! Kubernetes mode writes, by server-side apply, the Secret Istio's
//! multi-primary setup reads: `istio-remote-secret-<object>` in the agent's
//! namespace, labelled `istio/multiCluster: "true"`, annotated
//! `networking.istio.io/cluster: <object>`, data key `<object>` holding the
//! same kubeconfig; it is deleted when the peer stops offering an API host.

use crate::cluster_uuid::ClusterUuid;
use crate::data_plane::DataPlane;
use crate::keys;
use crate::sinks::DataPlaneSink;
use crate::BoxFuture;
use anyhow::Context as _;
use base64::Engine as _;
use multicloud_core::token::Scope;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct RemoteSecretOptions {
    /// Standalone mode: where the kubeconfig files go.
    pub dir: PathBuf,
    /// Kubernetes mode: write Secrets in this namespace instead of files.
    pub kubernetes: Option<(kube::Client, String)>,
    /// Lifetime of the `scope: api` token.
    pub ttl_secs: i64,
    /// Test bed only: `apiHost` host name -> address to connect to instead
    /// (the kubeconfig then names the host in `tls-server-name`).
    pub host_overrides: BTreeMap<String, String>,
    /// Where the expiry of each written token is published
    /// (`multicloud_agent_remote_secret_token_expiry_timestamp_seconds`).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// Where and how a peer's API proxy is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub object: String,
    pub peer_uuid: ClusterUuid,
    pub server: String,
    pub tls_server_name: Option<String>,
    /// PEM CA(s) for the peer's gateway (the object's `spec.metadata.ca`).
    pub ca: Option<String>,
}

struct Issued {
    target: Target,
    exp: i64,
    /// The public half of the key that signed it: a promoted key re-issues.
    signer: [u8; 32],
}

#[derive(Default)]
struct State {
    local_uuid: Option<String>,
    targets: Vec<Target>,
    issued: BTreeMap<String, Issued>,
}

pub struct RemoteSecrets {
    keys: tokio::sync::watch::Receiver<crate::keys::KeyRing>,
    opts: RemoteSecretOptions,
    state: tokio::sync::Mutex<State>,
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// The host part of `host[:port]`.
fn host_of(api_host: &str) -> String {
    crate::host_port::HostPort::host_of(api_host)
}

/// The kubeconfig (YAML) for `t` with `token`, Istio remote secret style.
pub fn kubeconfig(t: &Target, token: &str) -> anyhow::Result<String> {
    use kube::config::{AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext, Preferences};
    let doc = Kubeconfig {
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        clusters: vec![NamedCluster {
            name: t.object.clone(),
            cluster: Some(Cluster {
                server: Some(t.server.clone()),
                certificate_authority_data: t.ca.as_ref().map(|ca| base64::engine::general_purpose::STANDARD.encode(ca.as_bytes())),
                tls_server_name: t.tls_server_name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        contexts: vec![NamedContext {
            name: t.object.clone(),
            context: Some(Context { cluster: t.object.clone(), user: Some(t.object.clone()), ..Default::default() }),
            ..Default::default()
        }],
        current_context: Some(t.object.clone()),
        preferences: Some(Preferences::default()),
        auth_infos: vec![NamedAuthInfo {
            name: t.object.clone(),
            auth_info: Some(AuthInfo { token: Some(token.to_string().into()), ..Default::default() }),
            ..Default::default()
        }],
        ..Default::default()
    };
    Ok(serde_saphyr::to_string(&doc)?)
}

impl RemoteSecrets {
    pub fn new(keys: tokio::sync::watch::Receiver<crate::keys::KeyRing>, opts: RemoteSecretOptions) -> anyhow::Result<Arc<RemoteSecrets>> {
        anyhow::ensure!(opts.ttl_secs >= 3, "--api-token-ttl-seconds must be at least 3");
        if opts.kubernetes.is_none() {
            std::fs::create_dir_all(&opts.dir).with_context(|| format!("creating --remote-secrets-dir {}", opts.dir.display()))?;
        }
        Ok(Arc::new(RemoteSecrets { keys, opts, state: Default::default() }))
    }

    pub fn path(&self, object: &str) -> PathBuf {
        self.opts.dir.join(format!("{object}.kubeconfig"))
    }

    pub fn secret_name(object: &str) -> String {
        multicloud_core::naming::remote_secret_name(object)
    }

    /// Writes one peer's kubeconfig where this mode keeps it.
    async fn write(&self, object: &str, kubeconfig: &str) -> anyhow::Result<()> {
        let Some((client, ns)) = &self.opts.kubernetes else {
            return keys::write_private_file(&self.path(object), kubeconfig.as_bytes());
        };
        use kube::api::{Patch, PatchParams};
        let name = Self::secret_name(object);
        let secret = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": {"istio/multiCluster": "true", "app.kubernetes.io/managed-by": "istio-multicloud"},
                "annotations": {"networking.istio.io/cluster": object},
            },
            "type": "Opaque",
            "data": {object: base64::engine::general_purpose::STANDARD.encode(kubeconfig)},
        });
        kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns)
            .patch(&name, &PatchParams::apply("istio-multicloud-agent").force(), &Patch::Apply(secret))
            .await
            .with_context(|| format!("applying Secret {ns}/{name} (check the agent's RBAC for secrets in {ns})"))?;
        Ok(())
    }

    async fn remove(&self, object: &str) {
        match &self.opts.kubernetes {
            None => {
                let _ = std::fs::remove_file(self.path(object));
            }
            Some((client, ns)) => {
                let name = Self::secret_name(object);
                let api = kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns);
                if let Err(e) = api.delete(&name, &Default::default()).await {
                    tracing::warn!(object, "cannot delete Secret {ns}/{name}: {e}");
                }
            }
        }
    }

    fn targets(&self, dp: &DataPlane) -> Vec<Target> {
        dp.peers
            .iter()
            .filter_map(|p| {
                let api_host = p.private.as_ref().map(|d| d.api_host.as_str()).filter(|h| !h.is_empty())?;
                let host = host_of(api_host);
                let (server, tls_server_name) = match self.opts.host_overrides.get(&host) {
                    Some(addr) => (format!("https://{addr}"), Some(host.clone())),
                    None => (format!("https://{api_host}"), None),
                };
                Some(Target {
                    object: p.name.clone(),
                    peer_uuid: p.cluster_uuid.clone(),
                    server,
                    tls_server_name,
                    ca: p.metadata_ca.clone(),
                })
            })
            .collect()
    }

    /// Writes every kubeconfig that is missing, changed, or whose token has
    /// less than a third of its lifetime left; removes those of gone peers.
    async fn sync(&self, now: i64) -> anyhow::Result<()> {
        let mut st = self.state.lock().await;
        let Some(local) = st.local_uuid.clone() else { return Ok(()) };
        let ttl = self.opts.ttl_secs;
        let mut errors = Vec::new();
        let key = self.keys.borrow().current.clone();
        let signer = key.verifying_key().to_bytes();
        for t in st.targets.clone() {
            let due = match st.issued.get(&t.object) {
                Some(i) => i.target != t || i.signer != signer || now >= i.exp - ttl / 3,
                None => true,
            };
            if !due {
                continue;
            }
            let token = keys::mint(&key, &local, t.peer_uuid.as_str(), Scope::Api, now, ttl);
            let res = match kubeconfig(&t, &token) {
                Ok(text) => self.write(&t.object, &text).await,
                Err(e) => Err(e),
            };
            match res {
                Ok(()) => {
                    tracing::info!(object = %t.object, server = %t.server, expires_in_s = ttl, "remote secret (kubeconfig) written with a fresh api token");
                    if let Some(m) = &self.opts.metrics {
                        m.remote_secret_token(&t.object, now + ttl);
                    }
                    st.issued.insert(t.object.clone(), Issued { target: t, exp: now + ttl, signer });
                }
                Err(e) => errors.push(format!("{}: {e:#}", t.object)),
            }
        }
        let gone: Vec<String> = st.issued.keys().filter(|o| !st.targets.iter().any(|t| &t.object == *o)).cloned().collect();
        for o in gone {
            st.issued.remove(&o);
            self.remove(&o).await;
            if let Some(m) = &self.opts.metrics {
                m.remote_secret_removed(&o);
            }
            tracing::info!(object = %o, "peer no longer offers an API host: remote secret removed");
        }
        anyhow::ensure!(errors.is_empty(), "cannot write remote secrets: {}", errors.join("; "));
        Ok(())
    }

    /// Checks for due re-issues every sixth of the lifetime (1 s to 60 s).
    pub fn spawn_timer(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        let every = Duration::from_secs((self.opts.ttl_secs / 6).clamp(1, 60) as u64);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = self.sync(unix_now()).await {
                    tracing::error!("{e:#}");
                }
            }
        })
    }
}

impl DataPlaneSink for RemoteSecrets {
    fn apply<'a>(&'a self, dp: &'a DataPlane) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            {
                let mut st = self.state.lock().await;
                st.local_uuid = Some(dp.local.cluster_uuid.to_ascii_lowercase());
                st.targets = self.targets(dp);
            }
            self.sync(unix_now()).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data_plane::EstablishedPeer;
    use ed25519_dalek::SigningKey;
    use multicloud_core::metadata::PrivateMetadata;

    const A: &str = "11111111-1111-4111-8111-111111111111";
    const B: &str = "22222222-2222-4222-8222-222222222222";

    fn dp(api_host: &str) -> DataPlane {
        let private = PrivateMetadata {
            ingress_gateways: vec![],
            api_host: api_host.into(),
            network_name: "nb".into(),
            services: vec![],
            mesh_mode: None,
        };
        crate::data_plane::sample_data_plane(
            A,
            "na",
            vec![EstablishedPeer {
                name: "cluster-b".into(),
                cluster_uuid: B.parse().unwrap(),
                root_ca: String::new(),
                private: Some(private),
                enable_ingress_gateway: true,
                metadata_ca: Some("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into()),
            }],
        )
    }

    fn token_of(text: &str) -> (String, serde_json::Value) {
        let v: serde_json::Value = serde_saphyr::from_str(text).unwrap();
        let token = v["users"][0]["user"]["token"].as_str().unwrap().to_string();
        let payload = token.split('.').nth(1).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        (token, claims)
    }

    #[tokio::test]
    async fn a_kubeconfig_is_written_per_peer_and_reissued_when_a_third_of_its_life_is_left() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[7; 32]);
        let (keys, ring) = tokio::sync::watch::channel(crate::keys::KeyRing::new(key));
        let overrides = BTreeMap::from([("api.b.example".to_string(), "127.0.0.1:8443".to_string())]);
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let rs = RemoteSecrets::new(
            ring,
            RemoteSecretOptions {
                dir: dir.path().into(),
                kubernetes: None,
                ttl_secs: 600,
                host_overrides: overrides,
                metrics: Some(metrics.clone()),
            },
        )
        .unwrap();
        rs.apply(&dp("api.b.example:443")).await.unwrap();
        let path = dir.path().join("cluster-b.kubeconfig");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(v["clusters"][0]["cluster"]["server"], "https://127.0.0.1:8443");
        assert_eq!(v["clusters"][0]["cluster"]["tls-server-name"], "api.b.example");
        assert!(v["clusters"][0]["cluster"]["certificate-authority-data"].is_string());
        assert_eq!(v["current-context"], "cluster-b");
        let (t1, claims) = token_of(&text);
        assert_eq!(claims["scope"], "api");
        assert_eq!(claims["sub"], A);
        assert_eq!(claims["aud"], B);
        assert_eq!(claims["exp"].as_i64().unwrap() - claims["nbf"].as_i64().unwrap(), 600);
        let expiry = format!("multicloud_agent_remote_secret_token_expiry_timestamp_seconds{{object=\"cluster-b\"}} {}", claims["exp"]);
        assert!(metrics.render().contains(&expiry), "{}", metrics.render());

        // Not due yet: the same token stays.
        let nbf = claims["nbf"].as_i64().unwrap();
        rs.sync(nbf + 399).await.unwrap();
        assert_eq!(token_of(&std::fs::read_to_string(&path).unwrap()).0, t1);
        // A third of the lifetime left: re-issued.
        rs.sync(nbf + 400).await.unwrap();
        let (t2, c2) = token_of(&std::fs::read_to_string(&path).unwrap());
        assert_ne!(t1, t2);
        assert_eq!(c2["nbf"].as_i64().unwrap(), nbf + 400);
        // A promoted key (rotate-key promote) re-issues at once, signed with it.
        let promoted = SigningKey::from_bytes(&[8; 32]);
        keys.send_replace(crate::keys::KeyRing { current: promoted.clone(), next: None, previous: Some(SigningKey::from_bytes(&[7; 32])) });
        rs.sync(nbf + 401).await.unwrap();
        let (t3, _) = token_of(&std::fs::read_to_string(&path).unwrap());
        let verify =
            |t: &str, k: &SigningKey| multicloud_core::token::verify(t, B, nbf + 402, 600, |_| Some(((), [k.verifying_key()]))).is_ok();
        assert!(verify(&t3, &promoted) && !verify(&t3, &SigningKey::from_bytes(&[7; 32])), "re-issued with the promoted key");

        // Without an override the apiHost is the server; a peer without an apiHost loses its file.
        rs.apply(&dp("api.other.example:6443")).await.unwrap();
        let v: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["clusters"][0]["cluster"]["server"], "https://api.other.example:6443");
        assert!(v["clusters"][0]["cluster"]["tls-server-name"].is_null());
        rs.apply(&dp("")).await.unwrap();
        assert!(!path.exists());
        assert!(!metrics.render().contains("{object=\"cluster-b\"}"), "the expiry series goes with the secret");
    }

    #[test]
    fn host_of_strips_the_port() {
        assert_eq!(host_of("api.b.example:443"), "api.b.example");
        assert_eq!(host_of("api.b.example"), "api.b.example");
    }

    /// Kubernetes mode against kube's `tower_test` mock API server (no API
    /// server can run here): the remote Secret is applied with Istio's label,
    /// annotation and data key, and deleted when the peer stops offering an
    /// API host.
    #[tokio::test]
    async fn kubernetes_mode_applies_istios_remote_secret_and_deletes_it() {
        use http::{Method, Request, Response};
        use kube::client::Body;
        let (service, mut api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let rs = RemoteSecrets::new(
            crate::keys::fixed(SigningKey::from_bytes(&[7; 32])),
            RemoteSecretOptions {
                dir: PathBuf::new(),
                kubernetes: Some((client, "istio-system".into())),
                ttl_secs: 600,
                host_overrides: BTreeMap::new(),
                metrics: None,
            },
        )
        .unwrap();
        let server = tokio::spawn(async move {
            let (req, send) = api.next_request().await.expect("a request");
            assert_eq!(req.method(), Method::PATCH);
            assert_eq!(req.uri().path(), "/api/v1/namespaces/istio-system/secrets/istio-remote-secret-cluster-b");
            let q = req.uri().query().unwrap_or_default().to_string();
            assert!(q.contains("fieldManager=istio-multicloud-agent") && q.contains("force=true"), "{q}");
            assert_eq!(req.headers()["content-type"], "application/apply-patch+yaml");
            let body: serde_json::Value = serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
            send.send_response(Response::builder().status(200).body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap());
            let (req, send) = api.next_request().await.expect("a delete");
            assert_eq!(
                (req.method(), req.uri().path()),
                (&Method::DELETE, "/api/v1/namespaces/istio-system/secrets/istio-remote-secret-cluster-b")
            );
            send.send_response(Response::builder().status(200).body(Body::from(b"{}".to_vec())).unwrap());
            body
        });
        rs.apply(&dp("api.b.example:443")).await.unwrap();
        let mut gone = dp("");
        gone.peers[0].private.as_mut().unwrap().api_host = String::new();
        rs.apply(&gone).await.unwrap();
        let body = server.await.unwrap();
        assert_eq!(body["metadata"]["labels"]["istio/multiCluster"], "true");
        assert_eq!(body["metadata"]["annotations"]["networking.istio.io/cluster"], "cluster-b");
        let kubeconfig = base64::engine::general_purpose::STANDARD.decode(body["data"]["cluster-b"].as_str().unwrap()).unwrap();
        let text = String::from_utf8(kubeconfig).unwrap();
        let v: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(v["clusters"][0]["cluster"]["server"], "https://api.b.example:443");
        let (_, claims) = token_of(&text);
        assert_eq!((claims["scope"].as_str(), claims["aud"].as_str(), claims["sub"].as_str()), (Some("api"), Some(B), Some(A)));
    }
}
