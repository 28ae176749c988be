//! Plugs the HTTPS exchange client into the reconciler.

use crate::crd::IstioMulticloudSpec;
use crate::exchange::{FetchError, FetchPolicy, Remote, Trust};
use crate::reconcile::{ClientFactory, FetchFailure, MetadataClient};
use crate::BoxFuture;
use multicloud_core::metadata::{PrivateMetadata, ValidPublic};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub connect_timeout: Duration,
    pub total_timeout: Duration,
}

fn failure(e: FetchError) -> FetchFailure {
    FetchFailure { reason: e.reason().into(), label: e.metric_label().into(), message: e.to_string() }
}

struct Https(Remote);

impl MetadataClient for Https {
    fn fetch_public(&self) -> BoxFuture<'_, Result<ValidPublic, FetchFailure>> {
        Box::pin(async move { self.0.fetch_public().await.map_err(failure) })
    }

    fn fetch_private<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<PrivateMetadata, FetchFailure>> {
        Box::pin(async move { self.0.fetch_private(token).await.map_err(failure) })
    }
}

/// A factory of HTTPS clients with `policy`'s timeouts and a 1 MiB body limit.
pub fn factory(policy: Policy) -> ClientFactory {
    Arc::new(move |spec: &IstioMulticloudSpec| {
        let fp = FetchPolicy { connect_timeout: policy.connect_timeout, total_timeout: policy.total_timeout, ..FetchPolicy::default() };
        let remote = Remote::new(&spec.metadata_endpoint, Trust::from_spec(spec.metadata.as_ref()), fp).map_err(failure)?;
        Ok(Arc::new(Https(remote)) as Arc<dyn MetadataClient>)
    })
}
