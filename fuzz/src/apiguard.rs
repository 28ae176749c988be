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
use multicloud_core::apiguard::{check_request, empty_secrets_path, ApiRead, ApiRefusal, ApiSettings};
use multicloud_core::reply::GuardRefusal;

pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let method = lines.next().unwrap_or_default();
    let path = lines.next().unwrap_or_default();
    let headers: Vec<(&str, &str)> = lines.take(64).filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim(), v.trim())).collect();
    let settings = ApiSettings { allowed_secrets: vec![fixture::ALLOWED_SECRET.to_string()], ..Default::default() };
    let max = 16 * 1024;
    let verdict = check_request(method, path, headers.iter().copied(), max, &settings);
    match verdict {
        Err(r) => {
            assert!(matches!(r.status(), 403 | 405 | 431), "{r:?}");
            assert!(!matches!(r, ApiRefusal::Token(_) | ApiRefusal::RateLimited | ApiRefusal::TooManyWatches));
        }
        Ok(classified) => {
            let read = classified.read;
            assert_eq!(method, "GET");
            assert!(
                !headers.iter().any(|(k, _)| k.to_ascii_lowercase().starts_with("impersonate-")),
                "an impersonation header passed: {headers:?}"
            );
            if classified.to_empty_namespace {
                // Sent elsewhere: what the API server then reads must be a
                // list or watch of the Secrets of the empty namespace, and a
                // watch there is still counted as one.
                let sent = empty_secrets_path(path, &settings.empty_namespace);
                let view = oracle::kube_view(method, &sent);
                assert!(
                    view.resource_request
                        && view.group.is_empty()
                        && view.resource == "secrets"
                        && view.namespace == oracle::EMPTY_NAMESPACE
                        && view.name.is_empty()
                        && view.subresource.is_empty()
                        && matches!(view.verb.as_str(), "list" | "watch"),
                    "{path:?} was sent as {sent:?}, which the API server reads as {view:?}"
                );
                if view.verb == "watch" {
                    assert_eq!(read, ApiRead::Watch, "{sent:?} is a watch to the API server but the guard counts it as {read:?}");
                }
                return;
            }
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
