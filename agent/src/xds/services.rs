//! How the ADS server is served: the TLS accept loop in front of gRPC
//! ([`XdsServer::serve_tls`]), and the gRPC services a proxy calls: ADS
//! (state of the world and delta), and the per-type services an
//! `api_config_source` that is not ADS points at (ECDS, SDS, EDS, CDS).
//! Every one of them is the same stream handling (`super::sotw`,
//! `super::delta`), since each request names its type.

use super::server::XdsServer;
use super::stream::OUTBOUND_BUFFER;
use super::tls::{TlsConn, XdsPeer, XdsTls};
use super::{delta, sotw};
use multicloud_proto::envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use multicloud_proto::envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use multicloud_proto::envoy_types::pb::envoy::service::{cluster, endpoint, extension, secret};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// ADS, and the per-type services a proxy uses when a config source is not
/// ADS: an `EnvoyFilter`-added filter or cluster in an istiod-run proxy
/// points its ECDS/SDS/EDS/CDS `api_config_source` at the agent, and Envoy
/// then calls e.g. `ExtensionConfigDiscoveryService`.
fn router(server: &XdsServer) -> tonic::transport::server::Router {
    tonic::transport::Server::builder()
        .add_service(server.service())
        .add_service(extension::v3::extension_config_discovery_service_server::ExtensionConfigDiscoveryServiceServer::new(server.clone()))
        .add_service(secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer::new(server.clone()))
        .add_service(endpoint::v3::endpoint_discovery_service_server::EndpointDiscoveryServiceServer::new(server.clone()))
        .add_service(cluster::v3::cluster_discovery_service_server::ClusterDiscoveryServiceServer::new(server.clone()))
}

impl XdsServer {
    pub fn service(&self) -> AggregatedDiscoveryServiceServer<XdsServer> {
        AggregatedDiscoveryServiceServer::new(self.clone())
    }

    /// Serves without TLS: no client proves an identity, so restricted
    /// groups refuse everyone. In-process unit tests only; the agent serves
    /// TCP with [`XdsServer::serve_tls`].
    #[cfg(test)]
    pub async fn serve_plaintext(self, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        router(&self).serve_with_incoming(incoming).await?;
        Ok(())
    }

    /// Serves over mutual TLS: each accepted connection is handshaken in
    /// its own task (a slow client delays no one), and only connections
    /// whose client certificate chains to `tls`'s client roots reach gRPC,
    /// carrying the identity they proved. Failed handshakes are logged
    /// and counted.
    pub async fn serve_tls(self, listener: tokio::net::TcpListener, tls: Arc<XdsTls>) -> anyhow::Result<()> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<TlsConn, std::io::Error>>(OUTBOUND_BUFFER);
        let server = self.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, remote) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // E.g. out of file descriptors: give others time to close theirs.
                        tracing::warn!("xDS port: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let (tls, tx, server) = (tls.clone(), tx.clone(), server.clone());
                tokio::spawn(async move {
                    match tls.accept(tcp, remote).await {
                        Ok(conn) => {
                            let _ = tx.send(Ok(conn)).await;
                        }
                        Err((reason, detail)) => {
                            tracing::warn!(%remote, reason = reason.label(), error = %detail, "xDS port refused a client at the TLS handshake: present a certificate chained to this cluster's Istio root");
                            server.count_refusal(reason);
                        }
                    }
                });
            }
        });
        router(&self).serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(rx)).await?;
        Ok(())
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The response stream of one proxy's request stream, fed by `run` (the
/// protocol's stream handling, spawned with who the TLS handshake proved).
fn spawn_stream<Req, Resp: Send + 'static, F>(
    request: Request<Streaming<Req>>,
    run: impl FnOnce(Option<XdsPeer>, Streaming<Req>, tokio::sync::mpsc::Sender<Result<Resp, Status>>) -> F,
) -> Result<Response<ResponseStream<Resp>>, Status>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(OUTBOUND_BUFFER);
    let peer = request.extensions().get::<XdsPeer>().cloned();
    tokio::spawn(run(peer, request.into_inner(), tx));
    Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        spawn_stream(request, |peer, requests, tx| sotw::run(self.clone(), peer, requests, tx))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        spawn_stream(request, |peer, requests, tx| delta::run(self.clone(), peer, requests, tx))
    }
}

/// A per-type xDS service (`$stream`/`$delta` are its SotW and delta
/// methods) served by the same handling as ADS; its unary fetch is refused.
macro_rules! per_type_service {
    ($trait_:path, $stream:ident, $stream_ty:ident, $delta:ident, $delta_ty:ident, $fetch:ident) => {
        #[tonic::async_trait]
        impl $trait_ for XdsServer {
            type $stream_ty = ResponseStream<DiscoveryResponse>;
            type $delta_ty = ResponseStream<DeltaDiscoveryResponse>;

            async fn $stream(&self, request: Request<Streaming<DiscoveryRequest>>) -> Result<Response<Self::$stream_ty>, Status> {
                self.stream_aggregated_resources(request).await
            }

            async fn $delta(&self, request: Request<Streaming<DeltaDiscoveryRequest>>) -> Result<Response<Self::$delta_ty>, Status> {
                self.delta_aggregated_resources(request).await
            }

            async fn $fetch(&self, _request: Request<DiscoveryRequest>) -> Result<Response<DiscoveryResponse>, Status> {
                Err(Status::unimplemented("REST-style fetch is not served: use a gRPC stream"))
            }
        }
    };
}

per_type_service!(
    extension::v3::extension_config_discovery_service_server::ExtensionConfigDiscoveryService,
    stream_extension_configs,
    StreamExtensionConfigsStream,
    delta_extension_configs,
    DeltaExtensionConfigsStream,
    fetch_extension_configs
);
per_type_service!(
    secret::v3::secret_discovery_service_server::SecretDiscoveryService,
    stream_secrets,
    StreamSecretsStream,
    delta_secrets,
    DeltaSecretsStream,
    fetch_secrets
);
per_type_service!(
    endpoint::v3::endpoint_discovery_service_server::EndpointDiscoveryService,
    stream_endpoints,
    StreamEndpointsStream,
    delta_endpoints,
    DeltaEndpointsStream,
    fetch_endpoints
);
per_type_service!(
    cluster::v3::cluster_discovery_service_server::ClusterDiscoveryService,
    stream_clusters,
    StreamClustersStream,
    delta_clusters,
    DeltaClustersStream,
    fetch_clusters
);
