//! RDS-shaped parts: the identity-enforcing gateway's routes by
//! `:authority` to its local clusters (inline in each peer's chain).

use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};

/// One virtual host per exported service port `(host, port, cluster)`:
/// `host:port` always, the bare host for the service's first port; every
/// path to `cluster`.
pub fn local_virtual_hosts(ports: &[(&str, u16, String)]) -> Vec<VirtualHost> {
    ports
        .iter()
        .map(|(host, port, cluster)| {
            let mut domains = vec![format!("{host}:{port}")];
            if ports.iter().find(|(h, _, _)| h == host).map(|(_, p, _)| p) == Some(port) {
                domains.push((*host).to_string());
            }
            VirtualHost {
                name: format!("{host}:{port}"),
                domains,
                routes: vec![Route {
                    r#match: Some(RouteMatch {
                        path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                        ..Default::default()
                    }),
                    action: Some(route::Action::Route(RouteAction {
                        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.clone())),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect()
}

/// The route configuration `name` of `virtual_hosts`.
pub fn route_configuration(name: String, virtual_hosts: Vec<VirtualHost>) -> RouteConfiguration {
    RouteConfiguration { name, virtual_hosts, ..Default::default() }
}
