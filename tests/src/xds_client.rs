//! An xDS client that is not Envoy: any node id, any client certificate or
//! none, over TLS or plaintext. It plays whoever can reach the agent's xDS
//! port (a pod behind the Service, a process on the node) and reports
//! exactly what it received, or where it was turned away.
//!
//! Like Envoy in the test bed and in `deploy/`, it does not verify the
//! agent's serving certificate: what is under test is whom the agent serves.

use multicloud_agent::exchange::trust::AcceptAnyCertificate;
use multicloud_proto::envoy_types::pb::envoy::config::core::v3::Node;
use multicloud_proto::envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use multicloud_proto::envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use multicloud_proto::envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use multicloud_proto::envoy_types::pb::google::protobuf::Any;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How the client reaches the port.
#[derive(Clone)]
pub enum Transport {
    /// No TLS at all.
    Plaintext,
    /// TLS, presenting this certificate chain and key (PEM), or none.
    Tls { client_cert: Option<(String, String)> },
}

/// What a request asks for.
#[derive(Clone, Copy, Debug)]
pub enum Api {
    /// `AggregatedDiscoveryService/StreamAggregatedResources`.
    Ads,
    /// `AggregatedDiscoveryService/DeltaAggregatedResources`.
    DeltaAds,
    /// `SecretDiscoveryService/StreamSecrets` (the per-type service).
    Sds,
}

/// Where the client was turned away.
#[derive(Debug)]
pub enum Refused {
    /// The connection (TCP, TLS or HTTP/2) failed before any gRPC status.
    Transport(String),
    /// The server answered the stream with this gRPC status.
    Status { code: tonic::Code, message: String },
}

impl Refused {
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Refused::Status { code, .. } => Some(*code),
            Refused::Transport(_) => None,
        }
    }
}

/// How long a request waits for its first answer (a response or a status).
const WAIT: Duration = Duration::from_secs(15);

/// Connects to `addr` as `node`, asks `api` for `names` of `type_url`
/// (none: wildcard), and returns the resources of the first response, or
/// how it was refused.
pub fn fetch(addr: SocketAddr, transport: &Transport, node: Node, api: Api, type_url: &str, names: &[&str]) -> Result<Vec<Any>, Refused> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| Refused::Transport(e.to_string()))?;
    rt.block_on(async {
        match tokio::time::timeout(WAIT, fetch_async(addr, transport, node, api, type_url, names)).await {
            Ok(r) => r,
            Err(_) => Err(Refused::Transport(format!("no response and no status within {WAIT:?}"))),
        }
    })
}

async fn fetch_async(
    addr: SocketAddr,
    transport: &Transport,
    node: Node,
    api: Api,
    type_url: &str,
    names: &[&str],
) -> Result<Vec<Any>, Refused> {
    let channel = channel(addr, transport).await.map_err(Refused::Transport)?;
    let status = |s: tonic::Status| Refused::Status { code: s.code(), message: s.message().to_string() };
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let sotw =
        DiscoveryRequest { node: Some(node.clone()), type_url: type_url.into(), resource_names: names.clone(), ..Default::default() };
    match api {
        Api::Ads | Api::Sds => {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(sotw).await.map_err(|e| Refused::Transport(e.to_string()))?;
            let rx = tokio_stream_of(rx);
            let mut stream = match api {
                Api::Ads => AggregatedDiscoveryServiceClient::new(channel).stream_aggregated_resources(rx).await,
                _ => SecretDiscoveryServiceClient::new(channel).stream_secrets(rx).await,
            }
            .map_err(status)?
            .into_inner();
            let first = stream.message().await.map_err(status)?;
            drop(tx);
            Ok(first.map(|r| r.resources).unwrap_or_default())
        }
        Api::DeltaAds => {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let req = DeltaDiscoveryRequest {
                node: Some(node),
                type_url: type_url.into(),
                resource_names_subscribe: names,
                ..Default::default()
            };
            tx.send(req).await.map_err(|e| Refused::Transport(e.to_string()))?;
            let mut stream = AggregatedDiscoveryServiceClient::new(channel)
                .delta_aggregated_resources(tokio_stream_of(rx))
                .await
                .map_err(status)?
                .into_inner();
            let first = stream.message().await.map_err(status)?;
            drop(tx);
            Ok(first.map(|r| r.resources.into_iter().filter_map(|r| r.resource).collect()).unwrap_or_default())
        }
    }
}

/// The requests as a stream that stays open while `rx`'s sender lives.
fn tokio_stream_of<T: Send + 'static>(rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

/// A gRPC channel to `addr` (HTTP/2), over TLS with the given client
/// certificate or none, or over plaintext.
async fn channel(addr: SocketAddr, transport: &Transport) -> Result<tonic::transport::Channel, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).map_err(|e| e.to_string())?;
    let tls = match transport {
        Transport::Plaintext => None,
        Transport::Tls { client_cert } => Some(Arc::new(client_config(client_cert.as_ref())?)),
    };
    let connector = tower::service_fn(move |_: ::http::Uri| {
        let tls = tls.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let io: Box<dyn Io> = match tls {
                None => Box::new(tcp),
                Some(cfg) => {
                    let name = ServerName::try_from("multicloud-agent-xds").map_err(std::io::Error::other)?;
                    Box::new(tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await?)
                }
            };
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(io))
        }
    });
    endpoint.connect_with_connector(connector).await.map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

fn client_config(client_cert: Option<&(String, String)>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate::new(&provider)));
    let mut cfg = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| e.to_string())?;
            builder.with_client_auth_cert(chain, key).map_err(|e| e.to_string())?
        }
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// A node as Envoy sends it: `id`, and `MULTICLOUD_ROLE` metadata if given.
pub fn node(id: &str, role: Option<&str>) -> Node {
    use multicloud_proto::envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
    let metadata = role.map(|r| Struct {
        fields: [("MULTICLOUD_ROLE".to_string(), Value { kind: Some(Kind::StringValue(r.to_string())) })].into_iter().collect(),
    });
    Node { id: id.into(), cluster: "xds-client".into(), metadata, ..Default::default() }
}
