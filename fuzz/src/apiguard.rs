//! The API guard's request classification (`core::apiguard::check_request`
//! and `classify`): verb, impersonation headers, header size, path, query.
//!
//! Input: a first line with the method, a second with the path and query,
//! then one header per line (`name: value`). The Secret `cacerts` is
//! allow-listed.
//!
//! Properties: nothing panics; whatever the guard lets through is, as the
//! Kubernetes API server reads it ([`oracle::kube_view`]), a GET of an
//! allow-listed resource with no subresource and no impersonation header,
//! or a discovery path; and every request the API server treats as a watch
//! the guard counts as one (else the per-peer watch limit would not hold).

use crate::{fixture, oracle};
use multicloud_core::apiguard::{check_request, ApiRead, ApiRefusal};
use multicloud_core::reply::GuardRefusal;

pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let method = lines.next().unwrap_or_default();
    let path = lines.next().unwrap_or_default();
    let headers: Vec<(&str, &str)> = lines.take(64).filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim(), v.trim())).collect();
    let allowed = [fixture::ALLOWED_SECRET.to_string()];
    let max = 16 * 1024;
    let verdict = check_request(method, path, headers.iter().copied(), max, &allowed);
    match verdict {
        Err(r) => {
            assert!(matches!(r.status(), 403 | 405 | 431), "{r:?}");
            assert!(!matches!(r, ApiRefusal::Token(_) | ApiRefusal::RateLimited | ApiRefusal::TooManyWatches));
        }
        Ok(read) => {
            assert_eq!(method, "GET");
            assert!(
                !headers.iter().any(|(k, _)| k.to_ascii_lowercase().starts_with("impersonate-")),
                "an impersonation header passed: {headers:?}"
            );
            let view = oracle::kube_view(method, path);
            if view.resource_request {
                assert_ne!(read, ApiRead::Discovery, "{path:?} is a resource request to the API server: {view:?}");
                assert!(oracle::kube_allows(&view, &[fixture::ALLOWED_SECRET]), "{path:?} passed, but the API server reads it as {view:?}");
                if view.verb == "watch" {
                    assert_eq!(read, ApiRead::Watch, "{path:?} is a watch to the API server but the guard counts it as {read:?}");
                }
            } else {
                assert_eq!(read, ApiRead::Discovery, "{path:?} is not a resource request to the API server");
            }
        }
    }
}
