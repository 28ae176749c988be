//! One proxy's stream, whichever the protocol: the first request names the
//! node and joins its group; requests are then handled as they come and
//! snapshot changes are pushed after [`DEBOUNCE`] ([`serve_stream`]). What
//! differs between state-of-the-world and delta ADS is a [`ProtocolStream`]
//! (`super::sotw`, `super::delta`).

use super::server::{Connection, Protocol, XdsServer};
use super::snapshot::{push_order, Snapshot};
use super::tls::XdsPeer;
use multicloud_proto::envoy_types::pb::envoy::config::core::v3::Node;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tonic::Status;

/// How long a push waits for further `set` calls, so that a burst of
/// changes reaches each proxy as one update.
pub const DEBOUNCE: Duration = Duration::from_millis(20);

/// Room for a few responses; a proxy that does not read stalls only its own stream.
pub(super) const OUTBOUND_BUFFER: usize = 16;

/// Why a stream ends early; sent to the proxy as the stream's status.
#[derive(Debug, thiserror::Error)]
pub(super) enum StreamError {
    #[error("the first request on an ADS stream must carry the node (id, cluster, metadata)")]
    NoNode,
    #[error("request without type_url; ADS requests must name the resource type")]
    NoTypeUrl,
}

/// How a stream handler stops: the proxy went away, or the stream ends with a status.
pub(super) enum End {
    Closed,
    Status(Status),
}

impl From<StreamError> for End {
    fn from(e: StreamError) -> End {
        End::Status(Status::invalid_argument(e.to_string()))
    }
}

impl From<Status> for End {
    fn from(s: Status) -> End {
        End::Status(s)
    }
}

/// One proxy's stream, whichever the protocol: its connection, the
/// group's current snapshot, what this stream knows of each type (`T`, the
/// protocol's own), and its nonces.
pub(super) struct Stream<T> {
    pub(super) conn: Connection,
    pub(super) snapshot: Option<Arc<Snapshot>>,
    pub(super) types: HashMap<String, T>,
    pub(super) nonces: Nonces,
}

/// What differs between the two protocols' streams: how a request is
/// handled and how one type of a new snapshot is pushed. The connect,
/// debounce and push loop around them ([`serve_stream`]) is the same.
pub(super) trait ProtocolStream {
    type Request: Send;
    type Response: Send;
    /// What the stream knows of one type.
    type TypeState;
    const PROTOCOL: Protocol;
    fn node(req: &Self::Request) -> Option<&Node>;
    async fn on_request(
        s: &mut Stream<Self::TypeState>,
        req: Self::Request,
        tx: &tokio::sync::mpsc::Sender<Result<Self::Response, Status>>,
    ) -> Result<(), End>;
    /// Sends what the current snapshot changed of one subscribed type.
    async fn push(
        s: &mut Stream<Self::TypeState>,
        type_url: &str,
        tx: &tokio::sync::mpsc::Sender<Result<Self::Response, Status>>,
    ) -> Result<(), End>;
}

/// One proxy's stream: the first request names the node; then requests are
/// handled as they come, and snapshot changes are pushed after [`DEBOUNCE`].
pub(super) async fn serve_stream<S: ProtocolStream>(
    server: XdsServer,
    peer: Option<XdsPeer>,
    mut requests: tonic::Streaming<S::Request>,
    tx: &tokio::sync::mpsc::Sender<Result<S::Response, Status>>,
) -> Result<(), End>
where
    S::Request: multicloud_proto::prost::Message + Default + 'static,
{
    let Some(first) = requests.message().await? else { return Ok(()) };
    let node = S::node(&first).ok_or(StreamError::NoNode)?;
    let (conn, mut snapshots) = server.connect(node, S::PROTOCOL, peer.as_ref())?;
    let snapshot = snapshots.borrow_and_update().clone();
    let mut s = Stream { conn, snapshot, types: HashMap::new(), nonces: Nonces::default() };
    S::on_request(&mut s, first, tx).await?;
    let mut push_at = None;
    loop {
        tokio::select! {
            req = requests.message() => match req? {
                Some(req) => S::on_request(&mut s, req, tx).await?,
                None => return Ok(()),
            },
            changed = snapshots.changed(), if push_at.is_none() => {
                if changed.is_err() {
                    return Ok(());
                }
                push_at = Some(tokio::time::Instant::now() + DEBOUNCE);
            },
            () = tokio::time::sleep_until(push_deadline(push_at)), if push_at.is_some() => {
                push_at = None;
                s.snapshot = snapshots.borrow_and_update().clone();
                // Type by type in push order.
                for type_url in push_order(s.types.keys()) {
                    S::push(&mut s, &type_url, tx).await?;
                }
            },
        }
    }
}

/// Sends one response; `End::Closed` once the proxy stopped reading.
pub(super) async fn send<T>(tx: &tokio::sync::mpsc::Sender<Result<T, Status>>, item: T) -> Result<(), End> {
    tx.send(Ok(item)).await.map_err(|_| End::Closed)
}

/// Ends the stream with the handler's status, if it has one.
pub(super) async fn finish<T>(tx: &tokio::sync::mpsc::Sender<Result<T, Status>>, result: Result<(), End>) {
    if let Err(End::Status(status)) = result {
        tracing::debug!(%status, "ending xDS stream");
        let _ = tx.send(Err(status)).await;
    }
}

/// When the next debounced push is due, if one is.
fn push_deadline(push_at: Option<tokio::time::Instant>) -> tokio::time::Instant {
    push_at.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600))
}

/// Per-stream nonces: unique within the stream, which is all ADS needs.
#[derive(Default)]
pub(super) struct Nonces(u64);

impl Nonces {
    pub(super) fn next(&mut self) -> String {
        self.0 += 1;
        self.0.to_string()
    }
}
