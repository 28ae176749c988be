//! Readiness as a data plane sink: the agent is ready (`/readyz`) once the
//! first data plane state was applied. It runs after the other sinks, which
//! stop the chain on error, so "ready" means every sink took the state.

use super::DataPlaneSink;
use crate::data_plane::DataPlane;
use crate::BoxFuture;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Sets its flag (the admin port's `ready`) on every applied state.
pub struct ReadyOnApply(pub Arc<AtomicBool>);

impl DataPlaneSink for ReadyOnApply {
    fn apply<'a>(&'a self, _dp: &'a DataPlane) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            self.0.store(true, Ordering::SeqCst);
            Ok(())
        })
    }
}
