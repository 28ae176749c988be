//! The build cache: resources reused byte for byte while their inputs do not change.

use multicloud_proto::mesh;
use std::sync::Arc;

/// Built resources kept between pushes, by (type, name), with the hash of
/// the inputs they were built from. Protobuf maps (e.g. `Struct` metadata)
/// encode in random order, so rebuilding an unchanged resource would change
/// its bytes and its version, and every push would resend everything; a
/// resource whose inputs did not change is reused byte for byte instead.
pub type BuildCache = parking_lot::Mutex<std::collections::HashMap<(&'static str, String), Built>>;

pub(crate) type BuiltMap = std::collections::HashMap<(&'static str, String), Built>;

/// A built resource.
#[derive(Debug, Clone)]
pub struct Built {
    /// The hash of the inputs it was built from ([`input_hash`]).
    pub key: u64,
    /// Its xDS version (`super::snapshot::resource_version`).
    pub version: String,
    pub resource: Arc<multicloud_proto::envoy_types::pb::google::protobuf::Any>,
}

/// The resource `(type_url, name)` taken out of last push's `old` when it
/// was built from the same inputs (`key`), else `build()`. Callers put what
/// they use into the next push's map, so entries nobody asks for again are
/// dropped at the end of a push.
pub(crate) fn cached(
    old: &mut BuiltMap,
    type_url: &'static str,
    name: &str,
    key: u64,
    build: impl FnOnce() -> Result<multicloud_proto::envoy_types::pb::google::protobuf::Any, mesh::BuildError>,
) -> Result<Built, mesh::BuildError> {
    match old.remove(&(type_url, name.to_string())) {
        Some(b) if b.key == key => Ok(b),
        _ => {
            let any = build()?;
            Ok(Built { key, version: super::snapshot::resource_version(&any), resource: Arc::new(any) })
        }
    }
}

pub(crate) fn input_hash<T: std::hash::Hash>(parts: &T) -> u64 {
    use std::hash::Hasher as _;
    // Fixed keys: the cache lives in this process only.
    let mut h = std::hash::DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}
