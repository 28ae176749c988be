//! The seam the reconciler fetches through ([`MetadataClient`], made per
//! spec by a [`ClientFactory`]), and the HTTPS exchange client ([`Remote`])
//! plugged into it: one client per `IstioMulticloud` spec, with the `run`
//! flags' timeouts.

use crate::crd::IstioMulticloudSpec;
use crate::exchange::{FetchError, FetchPolicy, Remote, Trust};
use crate::BoxFuture;
use multicloud_core::metadata::{PrivateMetadata, ValidPublic};
use std::sync::Arc;
use std::time::Duration;

/// Talks to one remote's metadata endpoint (HTTPS in production, a fake in
/// unit tests).
pub trait MetadataClient: Send + Sync {
    fn fetch_public(&self) -> BoxFuture<'_, Result<ValidPublic, FetchError>>;
    fn fetch_private<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<PrivateMetadata, FetchError>>;
}

/// Builds a client for a spec (fails for a spec that cannot work, e.g. an
/// `http://` endpoint).
pub type ClientFactory = Arc<dyn Fn(&IstioMulticloudSpec) -> Result<Arc<dyn MetadataClient>, FetchError> + Send + Sync>;

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub connect_timeout: Duration,
    pub total_timeout: Duration,
}

impl MetadataClient for Remote {
    fn fetch_public(&self) -> BoxFuture<'_, Result<ValidPublic, FetchError>> {
        Box::pin(Remote::fetch_public(self))
    }

    fn fetch_private<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<PrivateMetadata, FetchError>> {
        Box::pin(Remote::fetch_private(self, token))
    }
}

/// A factory of HTTPS clients with `policy`'s timeouts and a 1 MiB body limit.
pub fn factory(policy: Policy) -> ClientFactory {
    Arc::new(move |spec: &IstioMulticloudSpec| {
        let fp = FetchPolicy { connect_timeout: policy.connect_timeout, total_timeout: policy.total_timeout, ..FetchPolicy::default() };
        let remote = Remote::new(&spec.metadata_endpoint, Trust::from_spec(spec.metadata.as_ref()), fp)?;
        Ok(Arc::new(remote) as Arc<dyn MetadataClient>)
    })
}
