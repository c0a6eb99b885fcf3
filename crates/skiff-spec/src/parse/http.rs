//! The `http` section of a VM: the domains the daemon's reverse proxy routes
//! to it, the guest port, TLS and a health check.

use super::{expect_int, expect_str, expect_strings, expect_table, type_name, Errs, Fields};
use crate::{parse_duration_ms, HealthCheck, HttpSpec, TlsSpec};
use std::path::PathBuf;
use toml::Value;

const FIELDS: &[&str] = &["domains", "port", "tls", "health"];

/// A DNS name: labels of a-z, 0-9 and '-' (not first or last), dots
/// between them, at most 253 bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a domain name; use lower-case labels of a-z, 0-9 and '-' separated by dots, like \"app.example.test\"")]
pub struct DomainError(String);

pub fn check_domain(d: &str) -> Result<(), DomainError> {
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if d.is_empty() || d.len() > 253 || !d.split('.').all(ok_label) {
        return Err(DomainError(d.to_owned()));
    }
    Ok(())
}

pub(super) fn http(v: &Value, p: &str, errs: &mut Errs) -> Option<HttpSpec> {
    let t = expect_table(v, p, errs)?;
    let mut f = Fields::new(t, p);
    let domains = match f.get("domains") {
        None => {
            errs.push(
                &f.sub("domains"),
                "missing; list the host names to route, like [\"app.example.test\"]",
            );
            None
        }
        Some(v) => expect_strings(v, &f.sub("domains"), errs).and_then(|ds| {
            let mut bad = false;
            for (i, d) in ds.iter().enumerate() {
                if let Err(e) = check_domain(d) {
                    errs.push(&format!("{}[{i}]", f.sub("domains")), e);
                    bad = true;
                }
            }
            if ds.is_empty() {
                errs.push(&f.sub("domains"), "empty; list at least one host name");
                bad = true;
            }
            (!bad).then_some(ds)
        }),
    };
    let port = match f.get("port") {
        None => {
            errs.push(
                &f.sub("port"),
                "missing; the guest port the service listens on",
            );
            None
        }
        Some(v) => expect_int(v, &f.sub("port"), errs).and_then(|n| {
            u16::try_from(n).ok().filter(|n| *n > 0).or_else(|| {
                errs.push(
                    &f.sub("port"),
                    format!("{n} is not a port; allowed: 1 to 65535"),
                );
                None
            })
        }),
    };
    let tls = match f.get("tls") {
        None => Some(TlsSpec::None),
        Some(Value::String(s)) if s == "self-signed" => Some(TlsSpec::SelfSigned),
        Some(Value::Table(t)) => {
            let tp = f.sub("tls");
            let mut tf = Fields::new(t, &tp);
            let file = |tf: &mut Fields, key: &'static str, errs: &mut Errs| -> Option<PathBuf> {
                let kp = tf.sub(key);
                match tf.get(key).map(|v| expect_str(v, &kp, errs)) {
                    Some(Some(s)) if s.starts_with('/') => Some(PathBuf::from(s)),
                    Some(Some(s)) => {
                        errs.push(&kp, format!("{s:?} is not an absolute path"));
                        None
                    }
                    Some(None) => None,
                    None => {
                        errs.push(&kp, "missing; the path of a PEM file");
                        None
                    }
                }
            };
            let cert = file(&mut tf, "cert", errs);
            let key = file(&mut tf, "key", errs);
            tf.finish(&["cert", "key"], errs);
            match (cert, key) {
                (Some(cert), Some(key)) => Some(TlsSpec::Files { cert, key }),
                _ => None,
            }
        }
        Some(other) => {
            errs.push(
                &f.sub("tls"),
                format!("expected \"self-signed\" or {{ cert = \"/path.pem\", key = \"/path.key\" }}, found {}", type_name(other)),
            );
            None
        }
    };
    let health = f
        .get("health")
        .and_then(|v| health(v, &f.sub("health"), errs));
    f.finish(FIELDS, errs);
    Some(HttpSpec {
        domains: domains?,
        port: port?,
        tls: tls?,
        health,
    })
}

fn health(v: &Value, p: &str, errs: &mut Errs) -> Option<HealthCheck> {
    let t = expect_table(v, p, errs)?;
    let mut f = Fields::new(t, p);
    let path = match f.string("path", errs) {
        Some(s) if s.starts_with('/') => Some(s),
        Some(s) => {
            errs.push(&f.sub("path"), format!("{s:?} must start with '/'"));
            None
        }
        None => Some("/".to_owned()),
    };
    let mut duration = |key: &'static str, default: u64, errs: &mut Errs| -> Option<u64> {
        match f.string(key, errs) {
            None => Some(default),
            Some(s) => match parse_duration_ms(&s) {
                Ok(0) => {
                    errs.push(&f.sub(key), "must be longer than 0");
                    None
                }
                Ok(ms) => Some(ms),
                Err(e) => {
                    errs.push(&f.sub(key), e);
                    None
                }
            },
        }
    };
    let interval_ms = duration("interval", 5_000, errs);
    let timeout_ms = duration("timeout", 2_000, errs);
    let unhealthy_after = match f.get("unhealthy_after") {
        None => Some(3),
        Some(v) => expect_int(v, &f.sub("unhealthy_after"), errs).and_then(|n| {
            u32::try_from(n)
                .ok()
                .filter(|n| (1..=100).contains(n))
                .or_else(|| {
                    errs.push(
                        &f.sub("unhealthy_after"),
                        format!("{n} is out of range; allowed: 1 to 100"),
                    );
                    None
                })
        }),
    };
    f.finish(&["path", "interval", "timeout", "unhealthy_after"], errs);
    Some(HealthCheck {
        path: path?,
        interval_ms: interval_ms?,
        timeout_ms: timeout_ms?,
        unhealthy_after: unhealthy_after?,
    })
}

#[cfg(test)]
mod tests {
    use crate::{parse_file, HealthCheck, TlsSpec};

    #[test]
    fn a_full_http_section_parses_with_defaults_filled_in() {
        let specs = parse_file(
            r#"
[vm.web]
network = { mode = "bridge", network = "lan" }
http = { domains = ["app.example.test", "www.example.test"], port = 8080, tls = "self-signed", health = { path = "/healthz", interval = "2s" } }
[vm.api]
network = { mode = "bridge", network = "lan" }
http = { domains = ["api.example.test"], port = 80, tls = { cert = "/etc/a.pem", key = "/etc/a.key" } }
"#,
        )
        .expect("valid");
        let web = specs
            .iter()
            .find(|s| s.name == "web")
            .and_then(|s| s.http.clone())
            .expect("http");
        assert_eq!(web.domains, ["app.example.test", "www.example.test"]);
        assert_eq!(web.port, 8080);
        assert_eq!(web.tls, TlsSpec::SelfSigned);
        assert_eq!(
            web.health,
            Some(HealthCheck {
                path: "/healthz".into(),
                interval_ms: 2000,
                timeout_ms: 2000,
                unhealthy_after: 3
            })
        );
        let api = specs
            .iter()
            .find(|s| s.name == "api")
            .and_then(|s| s.http.clone())
            .expect("http");
        assert_eq!(
            api.tls,
            TlsSpec::Files {
                cert: "/etc/a.pem".into(),
                key: "/etc/a.key".into()
            }
        );
        assert_eq!(api.health, None);
    }
}
