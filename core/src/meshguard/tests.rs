use super::*;

const LOCAL: &str = "6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a000b";
const A: &str = "6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a000a";
const C: &str = "6F9C1C1E-3B7A-4D6E-9A51-1F1F7C1A000C";
const SPIFFE: &str = "spiffe://cluster.local/ns/app/sa/client";

fn peer(name: &str, uuid: &str, services: &[&str]) -> MeshPeer {
    MeshPeer {
        name: name.into(),
        cluster_uuid: uuid.into(),
        sni: format!("{}.peer.multicloud", uuid.to_ascii_lowercase()),
        services: services.iter().map(|s| s.to_string()).collect(),
    }
}

fn guard() -> MeshGuard {
    MeshGuard::compile(
        &MeshSettings {
            peers: vec![
                peer("cluster-c", C, &["bar.abc.svc.cluster.local"]),
                peer("cluster-1", A, &["foo.abc.svc.cluster.local", "Baz.ABC.svc.cluster.local."]),
            ],
        },
        LOCAL,
    )
    .unwrap()
}

fn sni(uuid: &str) -> String {
    format!("{}.peer.multicloud", uuid.to_ascii_lowercase())
}

fn decide<'a, 'h>(
    g: &'a MeshGuard,
    sni: Option<&'h str>,
    san: Option<&'h str>,
    authority: &'h str,
    names: &[&'h str],
) -> MeshOutcome<'a, 'h> {
    g.decide(MeshRequest { sni, peer_uri_san: san, authority }, names.iter().copied())
}

fn refused(o: &MeshOutcome<'_, '_>) -> Option<MeshRefusal> {
    match o {
        MeshOutcome::Refuse { refusal, .. } => Some(*refusal),
        MeshOutcome::Allow { .. } => None,
    }
}

#[test]
fn an_exported_service_passes_with_the_callers_identity_and_forged_headers_stripped() {
    let g = guard();
    let s = sni(A);
    let names = [
        ":authority",
        ":path",
        "x-multicloud-caller-cluster",
        "X-Multicloud-Caller-Spiffe",
        "x-multicloud-callerx",
        "x-multicloud",
        "accept",
    ];
    let o = decide(&g, Some(&s), Some(SPIFFE), "foo.abc.svc.cluster.local:8080", &names);
    let MeshOutcome::Allow { peer, spiffe, strip } = &o else { panic!("refused: {o:?}") };
    assert_eq!(peer.name, "cluster-1");
    assert_eq!(*spiffe, SPIFFE);
    assert_eq!(strip, &["x-multicloud-caller-cluster", "X-Multicloud-Caller-Spiffe", "x-multicloud-callerx"]);
    assert_eq!(o.caller_headers().unwrap(), [(CALLER_CLUSTER, "cluster-1"), (CALLER_CLUSTER_UUID, A), (CALLER_SPIFFE, SPIFFE)]);
    assert_eq!(g.counter_names()[o.counter()], "multicloud_mesh.peer.cluster-1.allowed");
}

#[test]
fn authority_and_sni_are_compared_without_case_port_or_trailing_dot() {
    let g = guard();
    let upper = sni(A).to_ascii_uppercase() + ".";
    for authority in
        ["foo.abc.svc.cluster.local", "FOO.abc.svc.cluster.local.", "foo.abc.svc.cluster.local.:80", "baz.abc.svc.cluster.local"]
    {
        let o = decide(&g, Some(&upper), Some(SPIFFE), authority, &[]);
        assert_eq!(refused(&o), None, "{authority}: {o:?}");
    }
    // C's UUID was configured in upper case: the header carries lower case.
    let s = sni(C);
    let o = decide(&g, Some(&s), Some(SPIFFE), "bar.abc.svc.cluster.local", &[]);
    assert_eq!(o.caller_headers().unwrap()[1], (CALLER_CLUSTER_UUID, C.to_ascii_lowercase().as_str()));
}

#[test]
fn authority_host_strips_ports_and_brackets() {
    assert_eq!(authority_host("a.b:80"), "a.b");
    assert_eq!(authority_host("a.b."), "a.b");
    assert_eq!(authority_host("a.b:x"), "a.b:x");
    assert_eq!(authority_host("[::1]:80"), "::1");
    assert_eq!(authority_host("::1"), "::1");
    assert_eq!(authority_host(""), "");
}

/// SNI, URI SAN, authority, the refusal, its counter.
type Case<'a> = (Option<&'a str>, Option<&'a str>, &'a str, MeshRefusal, &'a str);

#[test]
fn refusals_name_the_reason_and_count_per_peer() {
    let g = guard();
    let (a, c) = (sni(A), sni(C));
    let cases: [Case<'_>; 9] = [
        (None, Some(SPIFFE), "foo.abc.svc.cluster.local", MeshRefusal::UnknownPeer, "multicloud_mesh.refused.unknown_peer"),
        (Some(""), Some(SPIFFE), "foo.abc.svc.cluster.local", MeshRefusal::UnknownPeer, "multicloud_mesh.refused.unknown_peer"),
        (
            Some("x.peer.multicloud"),
            Some(SPIFFE),
            "foo.abc.svc.cluster.local",
            MeshRefusal::UnknownPeer,
            "multicloud_mesh.refused.unknown_peer",
        ),
        (
            Some(&a),
            None,
            "foo.abc.svc.cluster.local",
            MeshRefusal::NoPeerIdentity,
            "multicloud_mesh.peer.cluster-1.refused.no_peer_identity",
        ),
        (
            Some(&a),
            Some("https://x"),
            "foo.abc.svc.cluster.local",
            MeshRefusal::NoPeerIdentity,
            "multicloud_mesh.peer.cluster-1.refused.no_peer_identity",
        ),
        (
            Some(&a),
            Some("spiffe://a/b\r\nx: y"),
            "foo.abc.svc.cluster.local",
            MeshRefusal::NoPeerIdentity,
            "multicloud_mesh.peer.cluster-1.refused.no_peer_identity",
        ),
        (
            Some(&a),
            Some(SPIFFE),
            "bar.abc.svc.cluster.local",
            MeshRefusal::ServiceNotExported,
            "multicloud_mesh.peer.cluster-1.refused.service_not_exported",
        ),
        (Some(&a), Some(SPIFFE), "", MeshRefusal::ServiceNotExported, "multicloud_mesh.peer.cluster-1.refused.service_not_exported"),
        (
            Some(&c),
            Some(SPIFFE),
            "foo.abc.svc.cluster.local",
            MeshRefusal::ServiceNotExported,
            "multicloud_mesh.peer.cluster-c.refused.service_not_exported",
        ),
    ];
    for (sni, san, authority, want, counter) in cases {
        let o = decide(&g, sni, san, authority, &["x-multicloud-caller-cluster"]);
        assert_eq!(refused(&o), Some(want), "{sni:?} {san:?} {authority}");
        assert_eq!(g.counter_names()[o.counter()], counter, "{sni:?} {san:?} {authority}");
        let MeshOutcome::Refuse { reply, .. } = o else { unreachable!() };
        assert_eq!(reply.status, 403);
        assert!(reply.headers.contains(&("content-type".into(), "application/json".into())));
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["reason"], want.reason());
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
        assert!(decide(&g, sni, san, authority, &[]).caller_headers().is_none());
    }
}

#[test]
fn counters_are_one_global_and_three_per_peer() {
    let g = guard();
    assert_eq!(
        g.counter_names(),
        [
            "multicloud_mesh.refused.unknown_peer",
            "multicloud_mesh.peer.cluster-c.allowed",
            "multicloud_mesh.peer.cluster-c.refused.no_peer_identity",
            "multicloud_mesh.peer.cluster-c.refused.service_not_exported",
            "multicloud_mesh.peer.cluster-1.allowed",
            "multicloud_mesh.peer.cluster-1.refused.no_peer_identity",
            "multicloud_mesh.peer.cluster-1.refused.service_not_exported",
        ]
    );
    let empty = MeshGuard::compile(&MeshSettings::default(), LOCAL).unwrap();
    assert_eq!(empty.counter_names(), ["multicloud_mesh.refused.unknown_peer"]);
    let o = decide(&empty, Some("x.peer.multicloud"), Some(SPIFFE), "foo", &[]);
    assert_eq!(refused(&o), Some(MeshRefusal::UnknownPeer));
}

#[test]
fn bad_configurations_are_refused_naming_the_field() {
    let cases: [(Vec<MeshPeer>, &str); 11] = [
        (vec![MeshPeer { name: "".into(), ..peer("x", A, &[]) }], "mesh.peers[0].name:"),
        (vec![MeshPeer { name: "Cluster_1".into(), ..peer("x", A, &[]) }], "mesh.peers[0].name:"),
        (vec![MeshPeer { name: "a..b".into(), ..peer("x", A, &[]) }], "mesh.peers[0].name:"),
        (vec![peer("x", "not-a-uuid", &[])], "mesh.peers[0].clusterUUID: is not a UUID"),
        (vec![peer("x", LOCAL, &[])], "mesh.peers[0].clusterUUID: is this cluster's own UUID"),
        (vec![MeshPeer { sni: "".into(), ..peer("x", A, &[]) }], "mesh.peers[0].sni:"),
        (vec![MeshPeer { sni: "10.0.0.1".into(), ..peer("x", A, &[]) }], "mesh.peers[0].sni:"),
        (vec![peer("x", A, &["ok.example", "bad host"])], "mesh.peers[0].services[1]: is not a host name"),
        (vec![peer("x", A, &[]), peer("x", C, &[])], "mesh.peers[1].name: listed twice"),
        (vec![peer("x", A, &[]), MeshPeer { sni: "other".into(), ..peer("y", A, &[]) }], "mesh.peers[1].clusterUUID: listed twice"),
        (vec![peer("x", A, &[]), MeshPeer { sni: sni(A).to_ascii_uppercase(), ..peer("y", C, &[]) }], "mesh.peers[1].sni: listed twice"),
    ];
    for (peers, want) in cases {
        let err = MeshGuard::compile(&MeshSettings { peers }, LOCAL).unwrap_err();
        assert!(err.to_string().contains(want), "{err} does not contain {want}");
    }
}

#[test]
fn the_mesh_section_is_optional_and_camel_case() {
    let s: MeshSettings = serde_json::from_str(
        r#"{"peers":[{"name":"cluster-1","clusterUUID":"6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a000a","sni":"a.peer.multicloud","services":["foo.abc.svc.cluster.local"]}]}"#,
    )
    .unwrap();
    assert_eq!(s.peers[0], MeshPeer { sni: "a.peer.multicloud".into(), ..peer("cluster-1", A, &["foo.abc.svc.cluster.local"]) });
    assert_eq!(serde_json::from_str::<MeshSettings>("{}").unwrap(), MeshSettings::default());
}
