//! Independent readings of an input, written from the specifications rather
//! than from core's code, for the targets to compare core's decisions with:
//! what a token's claims say (RFC 7519 with this project's rules), and how
//! the Kubernetes API server reads a request (its request-info rules and Go's
//! query parsing).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::Value;

/// The clock skew the project allows on `nbf` and `exp` (docs/edge.md).
pub const SKEW: i64 = 60;

/// The claims of a token that is in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub sub: String,
    pub scope: String,
    pub nbf: i64,
    pub exp: i64,
}

/// Reads `token` from scratch and says which rule it breaks, if any: at most
/// 8 KiB, three base64url parts, header `alg` EdDSA without `crit`, every
/// claim present and typed, the signature of `key` over the first two
/// parts, `aud` naming `local`, `now` within [nbf − skew, exp + skew] and a
/// lifetime of at most `max_lifetime`.
pub fn token_in_force(token: &str, key: &VerifyingKey, local: &str, now: i64, max_lifetime: i64) -> Result<Held, &'static str> {
    if token.len() > 8 * 1024 {
        return Err("size is over 8 KiB");
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [h64, p64, s64] = parts.as_slice() else { return Err("shape is not three dot-separated parts") };
    let decode = |s: &str| URL_SAFE_NO_PAD.decode(s).map_err(|_| "part is not unpadded base64url");
    let header: Value = serde_json::from_slice(&decode(h64)?).map_err(|_| "header is not JSON")?;
    if header.get("alg").and_then(Value::as_str) != Some("EdDSA") {
        return Err("alg is not EdDSA");
    }
    if header.get("crit").is_some_and(|c| !c.is_null()) {
        return Err("header has crit");
    }
    let claims: Value = serde_json::from_slice(&decode(p64)?).map_err(|_| "payload is not JSON")?;
    let text = |k: &str| claims.get(k).and_then(Value::as_str);
    let (Some(iss), Some(sub), Some(scope)) = (text("iss"), text("sub"), text("scope")) else {
        return Err("iss, sub or scope is missing or not a string");
    };
    if iss.is_empty() || sub.is_empty() {
        return Err("iss or sub is empty");
    }
    let (Some(nbf), Some(exp)) = (claims.get("nbf").and_then(Value::as_i64), claims.get("exp").and_then(Value::as_i64)) else {
        return Err("nbf or exp is missing or not an integer");
    };
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == local,
        Some(Value::Array(v)) if v.iter().all(Value::is_string) => v.iter().any(|a| a.as_str() == Some(local)),
        _ => return Err("aud is missing or not a string or array of strings"),
    };
    let sig: [u8; 64] = decode(s64)?.try_into().map_err(|_| "signature is not 64 bytes")?;
    let signed = &token.as_bytes()[..h64.len() + 1 + p64.len()];
    key.verify_strict(signed, &Signature::from_bytes(&sig)).map_err(|_| "signature does not verify")?;
    if !aud_ok {
        return Err("aud does not name this cluster");
    }
    if now > exp.saturating_add(SKEW) {
        return Err("exp has passed");
    }
    if now.saturating_add(SKEW) < nbf {
        return Err("nbf is still to come");
    }
    if exp.saturating_sub(nbf) > max_lifetime {
        return Err("lifetime is too long");
    }
    Ok(Held { sub: sub.into(), scope: scope.into(), nbf, exp })
}

/// How the Kubernetes API server reads a request: its "request info".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeView {
    /// False for discovery and other non-resource paths (`/version`, `/apis/<g>/<v>`).
    pub resource_request: bool,
    /// The server could not read the path (it answers with an error).
    pub unreadable: bool,
    pub verb: String,
    pub group: String,
    pub namespace: String,
    pub resource: String,
    pub name: String,
    pub subresource: String,
    /// The first `fieldSelector` value (what the API server reads), if any.
    pub field_selector: Option<String>,
}

/// Reads `path_and_query` as the API server's request-info rules do: the
/// path split on `/` after trimming slashes; `/api/<v>/...` or
/// `/apis/<g>/<v>/...`; a leading `watch` or `proxy` is the verb;
/// `namespaces/<ns>/<resource>` unless the third part is a namespace
/// subresource (`status`, `finalize`); then resource, name, subresource
/// (none for `proxy`); a GET without a name is a list, or a watch when the
/// first `watch` query value is anything but `0` or `false` (any case).
pub fn kube_view(method: &str, path_and_query: &str) -> KubeView {
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let mut v = KubeView::default();
    let trimmed = path.trim_matches('/');
    let parts: Vec<&str> = if trimmed.is_empty() { Vec::new() } else { trimmed.split('/').collect() };
    if parts.len() < 3 || !matches!(parts[0], "api" | "apis") {
        return v;
    }
    let mut rest = &parts[1..];
    if parts[0] == "apis" {
        if rest.len() < 3 {
            return v;
        }
        v.group = rest[0].to_string();
        rest = &rest[1..];
    }
    v.resource_request = true;
    rest = &rest[1..]; // the version
    if matches!(rest.first(), Some(&"watch") | Some(&"proxy")) {
        if rest.len() < 2 {
            v.unreadable = true;
            return v;
        }
        v.verb = rest[0].to_string();
        rest = &rest[1..];
    } else {
        v.verb = match method {
            "GET" | "HEAD" => "get",
            "POST" => "create",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            _ => "",
        }
        .to_string();
    }
    if rest.first() == Some(&"namespaces") && rest.len() > 1 {
        v.namespace = rest[1].to_string();
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest = &rest[2..];
        }
    }
    if rest.len() >= 3 && v.verb != "proxy" {
        v.subresource = rest[2].to_string();
    }
    if rest.len() >= 2 {
        v.name = rest[1].to_string();
    }
    if let Some(r) = rest.first() {
        v.resource = r.to_string();
    }
    v.field_selector = query_values(query, "fieldSelector").into_iter().next().map(|f| String::from_utf8_lossy(&f).into_owned());
    if v.name.is_empty() && v.verb == "get" {
        let watch = query_values(query, "watch").into_iter().next().is_some_and(|w| w != b"0" && !w.eq_ignore_ascii_case(b"false"));
        v.verb = if watch { "watch" } else { "list" }.to_string();
    }
    v
}

/// The values of `key` in a query string, in order, as Go's `url.ParseQuery`
/// gives them: pairs split on `&`, a pair holding `;` dropped, key and value
/// split at the first `=`, each unescaped (`+` is a space, `%XX` a byte, a
/// bad escape drops the pair).
pub fn query_values(query: &str, key: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for pair in query.split('&') {
        if pair.is_empty() || pair.contains(';') {
            continue;
        }
        let (k, val) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(k), Some(val)) = (unescape(k), unescape(val)) else { continue };
        if k == key.as_bytes() {
            out.push(val);
        }
    }
    out
}

fn unescape(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                let hi = hex(*b.get(i + 1)?)?;
                let lo = hex(*b.get(i + 2)?)?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

/// The namespace the guard sends Secret lists and watches to.
pub const EMPTY_NAMESPACE: &str = "istio-multicloud-empty";

/// The API proxy's allow-list as docs/ and the guard's module doc state it,
/// applied to the API server's reading of a request (that passes as it is:
/// Secret lists and watches never do, they are sent to [`EMPTY_NAMESPACE`]).
/// The mesh ConfigMap is `istio` in istio-system, by name or by its
/// `metadata.name` field selector.
pub fn kube_allows(v: &KubeView, allowed_secrets: &[&str]) -> bool {
    if !v.resource_request {
        return true; // discovery: judged by path in the target
    }
    if v.unreadable || !v.subresource.is_empty() || !matches!(v.verb.as_str(), "get" | "list" | "watch") {
        return false;
    }
    match v.group.as_str() {
        "" => match v.resource.as_str() {
            "services" | "endpoints" | "pods" | "namespaces" | "nodes" => true,
            "configmaps" => {
                v.name == "istio-ca-root-cert"
                    || (v.namespace == "istio-system"
                        && (v.name == "istio"
                            || (v.name.is_empty()
                                && v.field_selector.as_deref().is_some_and(|f| f == "metadata.name=istio" || f == "metadata.name==istio"))))
            }
            "secrets" => !v.name.is_empty() && allowed_secrets.contains(&v.name.as_str()),
            _ => false,
        },
        "discovery.k8s.io" => v.resource == "endpointslices",
        "apiextensions.k8s.io" => v.resource == "customresourcedefinitions",
        "networking.istio.io" | "security.istio.io" => true,
        _ => false,
    }
}
