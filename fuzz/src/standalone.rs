//! The agent's standalone file (`multicloud_agent::sources::standalone::parse`):
//! this cluster's facts and its `IstioMulticloud` objects, YAML or JSON.
//!
//! Input: the file's text.
//!
//! Properties: nothing panics, loops or runs out of memory (YAML aliases
//! and nesting included); an accepted file names every object, once; and
//! what was read, written back as a standalone file, reads back the same.

use multicloud_agent::sources::standalone::parse;
use serde_json::json;

pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(desired) = parse(&text) else { return };
    assert!(desired.peers.keys().all(|n| !n.is_empty()));
    let objects: Vec<serde_json::Value> = desired
        .peers
        .iter()
        .map(|(name, p)| {
            json!({
                "apiVersion": "istio-multicloud.dev/v1alpha1",
                "kind": "IstioMulticloud",
                "metadata": {"name": name, "generation": p.generation},
                "spec": p.spec,
            })
        })
        .collect();
    let file = json!({"cluster": desired.facts, "objects": objects});
    let yaml = serde_saphyr::to_string(&file).unwrap();
    let again = parse(&yaml).unwrap_or_else(|e| panic!("a file written from what was read is refused: {e:#}\n{yaml}"));
    assert_eq!(again, desired, "the standalone file does not survive read→write→read");
}
