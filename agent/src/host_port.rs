//! `host[:port]` as flags and documents write it (`gw.example:15443`,
//! `10.0.0.1`, `[fd00::1]:443`), parsed once by `http::uri::Authority`, so
//! an IPv6 address keeps its colons and loses its brackets in one place.

use http::uri::Authority;

/// A host (without IPv6 brackets) and its port, if one was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: Option<u16>,
}

impl HostPort {
    /// Parses `s`; the error says what is wrong with it (the caller names the flag or field).
    pub fn parse(s: &str) -> Result<HostPort, String> {
        if s.contains(['@', '/']) {
            return Err("want host[:port], without user or path".into());
        }
        let a: Authority = s.parse().map_err(|e| format!("not host[:port]: {e}"))?;
        let host = a.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("the host is empty".into());
        }
        // What follows the host: nothing, or `:` and a port 1-65535.
        let port = match s.strip_prefix(a.host()).unwrap_or_default() {
            "" => None,
            rest => match rest.strip_prefix(':').and_then(|p| p.parse::<u16>().ok()) {
                Some(p) if p > 0 => Some(p),
                _ => return Err("the port is not 1-65535".into()),
            },
        };
        Ok(HostPort { host: host.to_string(), port })
    }

    /// The host alone of `s`, or `s` itself when it does not parse.
    pub fn host_of(s: &str) -> String {
        HostPort::parse(s).map_or_else(|_| s.to_string(), |h| h.host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(host: &str, port: Option<u16>) -> Result<HostPort, String> {
        Ok(HostPort { host: host.into(), port })
    }

    #[test]
    fn names_ipv4_and_bracketed_ipv6_split_at_the_right_colon() {
        assert_eq!(HostPort::parse("gw.example:15443"), hp("gw.example", Some(15443)));
        assert_eq!(HostPort::parse("gw.example"), hp("gw.example", None));
        assert_eq!(HostPort::parse("10.0.0.1:443"), hp("10.0.0.1", Some(443)));
        assert_eq!(HostPort::parse("[fd00::1]:15443"), hp("fd00::1", Some(15443)));
        assert_eq!(HostPort::parse("[::1]"), hp("::1", None));
        assert_eq!(HostPort::host_of("[fd00::1]:443"), "fd00::1");
    }

    #[test]
    fn what_is_not_host_port_is_refused() {
        for bad in ["", ":443", "gw.example:0", "gw.example:99999", "gw.example:port", "fd00::1:443", "user@gw.example", "gw.example/x"] {
            assert!(HostPort::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
