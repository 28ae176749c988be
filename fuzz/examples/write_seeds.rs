//! Writes the fuzz targets' seeds: the inputs of core's and the agent's unit
//! tests, put in each target's input format, plus the fixtures' certificates
//! and keys. `scripts/fuzz.sh corpus` runs it, then minimizes the seeds, the
//! committed corpus and what fuzzing found into `fuzz/corpus/<target>`
//! (`cargo fuzz cmin`).
//!
//! Usage: write-seeds <dir>   (writes <dir>/<target>/<name>)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use multicloud_core::der;
use multicloud_core::edge::Doc;
use multicloud_core::pem;
use multicloud_core::token::{self, Audience, Claims};
use multicloud_fuzz::fixture::{self, A, B, C, NOW};
use std::path::{Path, PathBuf};

struct Out(PathBuf);

impl Out {
    fn put(&self, target: &str, name: &str, bytes: impl AsRef<[u8]>) {
        let dir = self.0.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

fn claims(scope: &str, sub: &str, nbf: i64, exp: i64) -> Claims {
    Claims { iss: "istio-multicloud".into(), sub: sub.into(), aud: Audience::One(B.into()), scope: scope.into(), nbf, exp }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap()
}

fn main() {
    let dir = std::env::args().nth(1).expect("usage: write-seeds <dir>");
    let out = Out(Path::new(&dir).to_path_buf());
    tokens(&out);
    edge(&out);
    apiguard(&out);
    meshguard(&out);
    documents(&out);
    pem_der(&out);
    standalone(&out);
}

/// core/src/token.rs's tests, at this target's clock.
fn tokens(out: &Out) {
    let a = fixture::key(fixture::A_SEED);
    let other = fixture::key(8);
    let c = claims("private-multicluster", A, NOW, NOW + 60);
    out.put("token", "valid", format!("0\n{}", token::sign(&a, &c)));
    out.put("token", "other-key", format!("0\n{}", token::sign(&other, &c)));
    out.put("token", "expired", format!("121\n{}", token::sign(&a, &c)));
    out.put("token", "skew-after-exp", format!("120\n{}", token::sign(&a, &c)));
    out.put("token", "not-yet-valid", format!("-61\n{}", token::sign(&a, &c)));
    let mut many = c.clone();
    many.aud = Audience::Many(vec!["x".into(), B.into()]);
    out.put("token", "aud-array", format!("0\n{}", token::sign(&a, &many)));
    let mut wrong = c.clone();
    wrong.aud = Audience::One(A.into());
    out.put("token", "wrong-audience", format!("0\n{}", token::sign(&a, &wrong)));
    let mut stranger = c.clone();
    stranger.sub = "someone-else".into();
    out.put("token", "unknown-peer", format!("0\n{}", token::sign(&a, &stranger)));
    let mut long = c.clone();
    long.exp = NOW + 10_000;
    out.put("token", "lifetime-too-long", format!("0\n{}", token::sign(&a, &long)));
    out.put("token", "two-parts", "0\na.b");
    out.put("token", "four-parts", "0\na.b.c.d");
    out.put("token", "too-large", format!("0\n{}", "x".repeat(token::MAX_TOKEN_BYTES + 1)));
    let b64 = |s: &[u8]| base64_url(s);
    out.put("token", "alg-none", format!("0\n{}.{}.", b64(br#"{"alg":"none"}"#), b64(b"{}")));
    out.put("token", "missing-claim", format!("0\n{}.{}.{}", b64(br#"{"alg":"EdDSA"}"#), b64(br#"{"sub":"a"}"#), b64(&[0u8; 64])));
    let mut tampered: Vec<String> = token::sign(&a, &c).split('.').map(String::from).collect();
    tampered[1] = b64(json(&claims("api", A, NOW, NOW + 60)).as_bytes());
    out.put("token", "tampered-payload", format!("0\n{}", tampered.join(".")));
    // Signed by the target itself: header and claims as given.
    out.put("token", "sign-valid", format!("0\nsign:{{\"alg\":\"EdDSA\",\"typ\":\"JWT\"}}\n{}", json(&c)));
    out.put("token", "sign-crit", format!("0\nsign:{{\"alg\":\"EdDSA\",\"crit\":[\"exp\"]}}\n{}", json(&c)));
    out.put("token", "sign-hs256", format!("0\nsign:{{\"alg\":\"HS256\"}}\n{}", json(&c)));
    out.put(
        "token",
        "sign-upper-sub",
        format!("0\nsign:{{\"alg\":\"EdDSA\"}}\n{}", json(&claims("api", &A.to_ascii_uppercase(), NOW, NOW + 60))),
    );
    // Claim sets for core's own signer.
    out.put("token", "claims-valid", format!("0\n{}", json(&c)));
    out.put("token", "claims-expired", format!("500\n{}", json(&c)));
    out.put("token", "claims-long", format!("0\n{}", json(&long)));
}

fn base64_url(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// core/src/edge/tests.rs's requests, one file per test.
fn edge(out: &Out) {
    let private = json(&claims("private-multicluster", A, NOW, NOW + 60));
    let api = json(&claims("api", A, NOW, NOW + 60));
    let etag = fixture::edge().etag(Doc::Public).to_string();
    out.put(
        "edge",
        "public-documents",
        format!(
            "m\tGET\t/metadata/public/public.json?x=1\nm\tGET\t/metadata/public/public.json\t\tW/{etag}\nm\tHEAD\t/metadata/public/spiffe-bundle-endpoint\n"
        ),
    );
    out.put(
        "edge",
        "unknown-paths-methods",
        "m\tGET\t/metadata/public/nope\nm\tGET\t/metadata/\nm\tGET\t/healthz\nm\tPOST\t/metadata/public/public.json\n",
    );
    out.put(
        "edge",
        "private-needs-token",
        format!(
            "m\tGET\t/metadata/private/multicluster.json\t@a {private}\nm\tGET\t/metadata/private/multicluster.json\t@a {private}\n\
             m\tGET\t/metadata/private/multicluster.json\t@a {private}\t\t200\nm\tGET\t/metadata/private/multicluster.json\t@a {api}\t\t-200\n\
             m\tGET\t/metadata/private/multicluster.json\t@x {private}\nm\tGET\t/metadata/private/multicluster.json\n\
             m\tGET\t/metadata/private/multicluster.json\tBasic abc\n"
        ),
    );
    out.put(
        "edge",
        "private-peer-c",
        format!(
            "m\tGET\t/metadata/private/multicluster.json\t@c {}\n",
            json(&claims("private-multicluster", &C.to_ascii_lowercase(), NOW, NOW + 60))
        ),
    );
    out.put(
        "edge",
        "api-authenticates-then-authorizes",
        format!(
            "a\tGET\t/api/v1/services\t@a {api}\na\tGET\t/api/v1/services\t@a {private}\na\tDELETE\t/api/v1/services/x\t@a {api}\n\
             a\tGET\t/api/v1/secrets\t@a {api}\na\tGET\t/api/v1/secrets\tBearer x.y.z\n"
        ),
    );
    out.put(
        "edge",
        "api-watch-limit",
        format!(
            "a\tGET\t/api/v1/services?watch=true\t@a {api}\na\tGET\t/api/v1/watch/pods\t@a {api}\t\t1\n\
             a\tGET\t/api/v1/services?watch=1\t@a {api}\t\t1\nw\na\tGET\t/api/v1/services?watch=1\t@a {api}\t\t1\n"
        ),
    );
    out.put(
        "edge",
        "api-headers",
        format!("a\tGET\t/api/v1/namespaces/istio-system/secrets/cacerts\t@a {api}\taccept:application/json|impersonate-user:admin\n"),
    );
}

/// core/src/apiguard.rs's paths, verbs and headers.
fn apiguard(out: &Out) {
    let paths = [
        "/version",
        "/apis",
        "/apis/networking.istio.io/v1",
        "/api/v1/services",
        "/api/v1/services?watch=true&resourceVersion=1",
        "/api/v1/watch/services",
        "/api/v1/namespaces/abc/pods/foo",
        "/api/v1/namespaces",
        "/api/v1/namespaces/abc",
        "/api/v1/nodes/n1",
        "/apis/discovery.k8s.io/v1/endpointslices?watch=1",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions?watch=1",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        "/apis/networking.istio.io/v1/namespaces/abc/virtualservices",
        "/apis/security.istio.io/v1/peerauthentications",
        "/api/v1/namespaces/istio-system/configmaps/istio-ca-root-cert",
        "/api/v1/namespaces/istio-system/secrets/cacerts",
        "/api/v1/secrets",
        "/api/v1/namespaces/abc/secrets",
        "/api/v1/namespaces/abc/secrets/db-password",
        "/api/v1/namespaces/abc/configmaps",
        "/api/v1/namespaces/abc/pods/foo/exec",
        "/api/v1/namespaces/abc/pods/foo/attach",
        "/api/v1/namespaces/abc/pods/foo/portforward",
        "/api/v1/namespaces/abc/pods/foo/log",
        "/api/v1/namespaces/abc/services/foo:80/proxy",
        "/api/v1/namespaces/abc/services/foo/proxy/x",
        "/api/v1/nodes/n1/proxy",
        "/apis/apps/v1/deployments",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        "/api/v1/namespaces/abc/../secrets",
        "/api/v1/namespaces/abc/%73ecrets",
        "/openapi/v2",
        "/",
    ];
    for (i, p) in paths.iter().enumerate() {
        out.put("apiguard", &format!("path-{i:02}"), format!("GET\n{p}\n"));
    }
    for m in ["POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] {
        out.put("apiguard", &format!("verb-{m}"), format!("{m}\n/api/v1/services\n"));
    }
    out.put("apiguard", "impersonate-user", "GET\n/api/v1/services\nimpersonate-user: admin\n");
    out.put("apiguard", "impersonate-group", "GET\n/api/v1/services\nImpersonate-Group: system:masters\n");
    out.put("apiguard", "big-header", format!("GET\n/api/v1/services\nx-big: {}\n", "x".repeat(17 * 1024)));
    out.put("apiguard", "accept", "GET\n/api/v1/services\naccept: application/json\n");
}

/// The mesh guard's input is structured: these are random inputs, drawn
/// (through the target's own vocabularies) from core/src/meshguard/tests.rs's
/// names, UUIDs, SNIs, services, SANs and header names; `cargo fuzz cmin`
/// keeps those that add coverage.
fn meshguard(out: &Out) {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..400 {
        let len = 16 + (next() % 480) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        out.put("meshguard", &format!("random-{i:03}"), bytes);
    }
}

fn public_doc() -> multicloud_core::metadata::PublicMetadata {
    fixture::config().public
}

/// core/src/metadata.rs's and edge/tests.rs's documents and configurations.
fn documents(out: &Out) {
    out.put("metadata", "public", json(&public_doc()));
    let mut two_roots = public_doc();
    two_roots.root_ca = format!("{}{}", fixture::ROOT_P256, fixture::ROOT_RSA);
    out.put("metadata", "public-two-roots", json(&two_roots));
    out.put("metadata", "private", json(&fixture::private_doc()));
    let mut p = fixture::private_doc();
    p.mesh_mode = Some("IdentityEnforcing".into());
    out.put("metadata", "private-identity-enforcing", json(&p));
    p.mesh_mode = Some("Open".into());
    out.put("metadata", "private-unknown-mode", json(&p));
    let mut p = fixture::private_doc();
    p.ingress_gateways[0].address = String::new();
    out.put("metadata", "private-empty-address", json(&p));
    p.ingress_gateways[0].address = "gw".into();
    p.network_name = String::new();
    out.put("metadata", "private-empty-network", json(&p));
    out.put(
        "metadata",
        "deckhouse-private",
        r#"{"ingressGateways":[{"address":"1.2.3.4","port":15443}],"apiHost":"istio-api-proxy.example.com","networkName":"n1","unknown":1}"#,
    );
    out.put("metadata", "private-ipv6-api-host", r#"{"ingressGateways":[],"apiHost":"[::1]:443","networkName":"n"}"#);

    let config = fixture::config();
    out.put("edge_config", "fixture", json(&config));
    let mut plain = config.clone();
    plain.mesh.peers.clear();
    out.put("edge_config", "without-mesh", json(&plain));
    let mut bad = config.clone();
    bad.public.root_ca = "not a pem".into();
    out.put("edge_config", "root-not-pem", json(&bad));
    let mut bad = config.clone();
    bad.peers[0].cluster_uuid = B.into();
    out.put("edge_config", "peer-own-uuid", json(&bad));
    let mut bad = config.clone();
    bad.private.ingress_gateways[0].port = 0;
    out.put("edge_config", "gateway-port-zero", json(&bad));
    out.put("edge_config", "not-json", "{");
    let mut v = serde_json::to_value(&config).unwrap();
    v["mesh"]["peers"][0]["clusterUUID"] = B.into();
    out.put("edge_config", "mesh-own-uuid", v.to_string());
    v["mesh"]["peers"] = serde_json::json!([{"name": "x"}]);
    out.put("edge_config", "mesh-peer-incomplete", v.to_string());
    let mut rsa = config;
    rsa.public.root_ca = fixture::ROOT_RSA.into();
    out.put("edge_config", "rsa-root", json(&rsa));
}

/// core/src/pem.rs's and der.rs's inputs, and the fixture certificates.
fn pem_der(out: &Out) {
    let roots = [
        ("p256", fixture::ROOT_P256),
        ("p384", fixture::ROOT_P384),
        ("p521", fixture::ROOT_P521),
        ("rsa", fixture::ROOT_RSA),
        ("ed25519", fixture::ROOT_ED25519),
    ];
    for (name, pem_text) in roots {
        out.put("pem", &format!("root-{name}"), pem_text);
        let block = pem::parse_blocks(pem_text).unwrap().remove(0);
        out.put("der", &format!("root-{name}"), &block.der);
        // The SubjectPublicKeyInfo alone (what spki_public_key reads).
        let mut r = der::Reader::new(&block.der);
        let mut cert = der::Reader::new(r.expect(der::TAG_SEQUENCE, "cert").unwrap());
        let mut tbs = der::Reader::new(cert.expect(der::TAG_SEQUENCE, "tbs").unwrap());
        let mut spki = None;
        while !tbs.is_empty() {
            let tlv = tbs.read().unwrap();
            if tlv.tag == der::TAG_SEQUENCE && der::spki_public_key(tlv.value).is_ok() {
                spki = Some(tlv.value.to_vec());
            }
        }
        out.put("der", &format!("spki-{name}"), spki.expect("a SubjectPublicKeyInfo"));
    }
    out.put("pem", "bundle", format!("{}{}{}", fixture::ROOT_P256, fixture::ROOT_RSA, fixture::ROOT_ED25519));
    out.put("pem", "ed25519-public", fixture::public_key_pem(fixture::A_SEED));
    out.put("pem", "ed25519-private", pem::ed25519_signing_key_to_pem(&fixture::key(fixture::A_SEED)));
    out.put("pem", "ec-public", fixture::EC_PUBLIC_KEY);
    out.put("pem", "not-pem", "hello");
    out.put("pem", "bad-body", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    out.put("pem", "unterminated", "-----BEGIN CERTIFICATE-----\nAAAA\n");
    out.put("pem", "rfc1421-headers", format!("-----BEGIN PUBLIC KEY-----\nProc-Type: 4,ENCRYPTED\n{}", &fixture::public_key_pem(1)[27..]));
    for (i, bytes) in
        [&[0x30u8][..], &[0x30, 0x05, 0x00], &[0x30, 0x85, 1, 1, 1, 1, 1], &[], &[0x30, 0x00], &[0x30, 0x03, 0x30, 0x01, 0x00]]
            .iter()
            .enumerate()
    {
        out.put("der", &format!("test-{i}"), bytes);
    }
}

/// agent/src/sources/standalone.rs's files, docs/agent.md's, and one like
/// the test bed writes (tests/src/mesh.rs).
fn standalone(out: &Out) {
    out.put(
        "standalone",
        "facts-and-objects",
        "\ncluster:\n  clusterUUID: 6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a000a\n  rootCA: \"x\"\n  networkName: n1\nobjects:\n\
         - apiVersion: istio-multicloud.dev/v1alpha1\n  kind: IstioMulticloud\n  metadata: {name: b}\n  spec: {metadataEndpoint: \"https://127.0.2.1:1/metadata\"}\n",
    );
    let head = "cluster: {clusterUUID: 6f9c1c1e-3b7a-4d6e-9a51-1f1f7c1a000a, rootCA: r, networkName: n}\nobjects:\n";
    let obj = |n: &str| {
        format!("- {{apiVersion: istio-multicloud.dev/v1alpha1, kind: IstioMulticloud, metadata: {{name: {n}}}, spec: {{metadataEndpoint: 'https://{n}/metadata'}}}}\n")
    };
    out.put("standalone", "two-objects", format!("{head}{}{}", obj("b"), obj("c")));
    out.put("standalone", "not-a-map", "cluster: [not, a, map]");
    out.put("standalone", "listed-twice", format!("{head}{}{}", obj("b"), obj("b")));
    out.put("standalone", "unknown-key", "cluster: {clusterUUID: u, rootCA: r, networkName: n}\nobject: []\n");
    out.put(
        "standalone",
        "docs-example",
        "cluster:\n  clusterUUID: 0d5c0000-3b7a-4d6e-9a51-1f1f7c1a000a\n  rootCA: |\n    -----BEGIN CERTIFICATE-----\n  networkName: network-a\n\
         \x20 apiHost: api.cluster-a.example:443\n  ingressGateways: [{address: 127.0.1.1, port: 15443}]\n\
         \x20 services: [{hostname: foo.abc.svc.cluster.local, ports: [{name: http, port: 80}], readyEndpoints: 2}]\n\
         objects:\n- apiVersion: istio-multicloud.dev/v1alpha1\n  kind: IstioMulticloud\n  metadata: {name: cluster-b}\n\
         \x20 spec: {metadataEndpoint: \"https://127.0.2.1:8443/metadata\", metadata: {ca: \"...\"}}\n",
    );
    let testbed = serde_json::json!({
        "cluster": {
            "clusterUUID": A,
            "rootCA": fixture::ROOT_P256,
            "ingressGateways": [{"address": "127.0.1.1", "port": 15443}],
            "apiHost": "api.cluster-1.example:443",
            "networkName": "network-1",
            "services": [{"hostname": "foo.abc.svc.cluster.local", "ports": [{"name": "http", "port": 80, "protocol": "HTTP"}], "readyEndpoints": 2}],
            "meshMode": "IdentityEnforcing",
            "localEndpoints": [{"hostname": "foo.abc.svc.cluster.local", "port": 80, "addresses": ["127.0.1.20:8080"]}],
        },
        "objects": [{
            "apiVersion": "istio-multicloud.dev/v1alpha1",
            "kind": "IstioMulticloud",
            "metadata": {"name": "cluster-2", "generation": 3},
            "spec": {"metadataEndpoint": "https://127.0.2.1:8443/metadata", "metadata": {"ca": fixture::ROOT_P256}, "enableIngressGateway": false},
        }],
    });
    out.put("standalone", "testbed-json", testbed.to_string());
    out.put("standalone", "yaml-anchors", format!("{head}- &o {{apiVersion: istio-multicloud.dev/v1alpha1, kind: IstioMulticloud, metadata: {{name: b}}, spec: {{metadataEndpoint: x}}}}\n"));
}
