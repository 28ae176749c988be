//! Reading Envoy's `/config_dump?include_eds` the way tests need it.

use serde_json::Value;

fn section<'a>(dump: &'a Value, type_suffix: &str) -> Option<&'a Value> {
    dump["configs"].as_array()?.iter().find(|c| c["@type"].as_str().is_some_and(|t| t.ends_with(type_suffix)))
}

/// Names of the dynamic active clusters.
pub fn clusters(dump: &Value) -> Vec<String> {
    section(dump, "ClustersConfigDump")
        .and_then(|s| s["dynamic_active_clusters"].as_array())
        .map(|a| a.iter().filter_map(|c| c["cluster"]["name"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// One dynamic active cluster's config.
pub fn cluster(dump: &Value, name: &str) -> Option<Value> {
    section(dump, "ClustersConfigDump")?["dynamic_active_clusters"]
        .as_array()?
        .iter()
        .find(|c| c["cluster"]["name"] == name)
        .map(|c| c["cluster"].clone())
}

/// Endpoints (address:port, weight) of a cluster's dynamic EDS config.
pub fn endpoints(dump: &Value, cluster: &str) -> Vec<(String, u64)> {
    let Some(s) = section(dump, "EndpointsConfigDump") else { return vec![] };
    let Some(cfg) =
        s["dynamic_endpoint_configs"].as_array().and_then(|a| a.iter().find(|e| e["endpoint_config"]["cluster_name"] == cluster))
    else {
        return vec![];
    };
    let mut out = Vec::new();
    for loc in cfg["endpoint_config"]["endpoints"].as_array().into_iter().flatten() {
        for lb in loc["lb_endpoints"].as_array().into_iter().flatten() {
            let sa = &lb["endpoint"]["address"]["socket_address"];
            out.push((
                format!("{}:{}", sa["address"].as_str().unwrap_or(""), sa["port_value"].as_u64().unwrap_or(0)),
                lb["load_balancing_weight"].as_u64().unwrap_or(1),
            ));
        }
    }
    out
}

/// Names of the dynamic active secrets.
pub fn secrets(dump: &Value) -> Vec<String> {
    section(dump, "SecretsConfigDump")
        .and_then(|s| s["dynamic_active_secrets"].as_array())
        .map(|a| a.iter().filter_map(|c| c["name"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// One dynamic active secret.
pub fn secret(dump: &Value, name: &str) -> Option<Value> {
    section(dump, "SecretsConfigDump")?["dynamic_active_secrets"].as_array()?.iter().find(|c| c["name"] == name).cloned()
}

/// ECDS filter configs by name.
pub fn ecds(dump: &Value) -> Vec<(String, Value)> {
    section(dump, "EcdsConfigDump")
        .and_then(|s| s["ecds_filters"].as_array())
        .map(|a| a.iter().filter_map(|f| Some((f["ecds_filter"]["name"].as_str()?.to_string(), f["ecds_filter"].clone()))).collect())
        .unwrap_or_default()
}
