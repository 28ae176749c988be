//! One group's xDS resources ([`Snapshot`]) and their versions. Versions
//! are content hashes, so two servers holding the same snapshot agree on
//! every version: a proxy that reconnects (to this process or a restarted
//! one) is not sent what it already has. Also the order types are pushed in
//! ([`PUSH_ORDER`]).

use multicloud_proto::envoy_types::pb::google::protobuf::Any;
use multicloud_proto::type_url::{CLUSTER, ENDPOINT, EXTENSION_CONFIG, LISTENER, ROUTE, SECRET};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub type TypeUrl = &'static str;

/// Push order: a type never references one pushed after it (clusters use
/// secrets and extension configs, endpoints belong to clusters, listeners
/// use clusters, routes belong to listeners).
pub const PUSH_ORDER: [TypeUrl; 6] = [SECRET, EXTENSION_CONFIG, CLUSTER, ENDPOINT, LISTENER, ROUTE];

/// One group's resources: type URL -> resource name -> (version, resource).
/// A resource's version is a hash of its encoded `Any`. Resources are
/// shared (`Arc`) between successive snapshots and the builder's cache, so an
/// unchanged resource costs its memory once however many snapshots hold it.
#[derive(Clone, Default, Debug)]
pub struct Snapshot {
    types: HashMap<String, BTreeMap<String, (String, Arc<Any>)>>,
}

/// Versions are content hashes, so comparing names and versions compares
/// contents without touching the resources' bytes.
impl PartialEq for Snapshot {
    fn eq(&self, other: &Self) -> bool {
        self.types.len() == other.types.len()
            && self.types.iter().all(|(t, m)| {
                other.types.get(t).is_some_and(|o| {
                    o.len() == m.len() && m.iter().zip(o.iter()).all(|((n1, (v1, _)), (n2, (v2, _)))| n1 == n2 && v1 == v2)
                })
            })
    }
}

/// The version of a resource: a hash of its type URL and encoded value.
pub fn resource_version(resource: &Any) -> String {
    hash_hex(&[resource.type_url.as_bytes(), &[0], &resource.value])
}

impl Snapshot {
    pub fn insert(&mut self, type_url: &str, name: &str, resource: Any) {
        let version = resource_version(&resource);
        self.types.entry(type_url.to_string()).or_default().insert(name.to_string(), (version, Arc::new(resource)));
    }

    /// Inserts a resource whose version is already known (see [`resource_version`]).
    pub fn insert_shared(&mut self, type_url: &str, name: &str, version: String, resource: Arc<Any>) {
        self.types.entry(type_url.to_string()).or_default().insert(name.to_string(), (version, resource));
    }

    pub fn remove(&mut self, type_url: &str, name: &str) {
        if let Some(t) = self.types.get_mut(type_url) {
            t.remove(name);
        }
    }

    /// The type's resources, by name: (version, resource).
    pub fn resources(&self, type_url: &str) -> Option<&BTreeMap<String, (String, Arc<Any>)>> {
        self.types.get(type_url)
    }

    /// A hash over the type's resources (names and versions); the same for
    /// an absent type and a type with no resources.
    pub fn version(&self, type_url: &str) -> String {
        let all = self.types.get(type_url);
        version_of(all.into_iter().flat_map(|m| m.iter().map(|(n, (v, _))| (n.as_str(), v.as_str()))))
    }
}

/// A version over (name, version) pairs in name order.
pub(super) fn version_of<'a>(items: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut h = Sha256::new();
    for (name, version) in items {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(version.as_bytes());
        h.update([0]);
    }
    hex16(&h.finalize())
}

fn hash_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    hex16(&h.finalize())
}

fn hex16(digest: &[u8]) -> String {
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Types in push order: [`PUSH_ORDER`] first, then any others by name.
pub(super) fn push_order<'a>(types: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut v: Vec<String> = types.cloned().collect();
    v.sort_by_key(|t| (PUSH_ORDER.iter().position(|p| p == t).unwrap_or(PUSH_ORDER.len()), t.clone()));
    v
}
