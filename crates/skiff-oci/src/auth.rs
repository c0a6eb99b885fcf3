//! Credentials as docker keeps them, and registry auth challenges.

use base64::Engine;
use std::collections::HashMap;
use std::path::PathBuf;

/// docker's config file: `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`.
fn docker_config() -> Option<PathBuf> {
    match std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        Some(d) => Some(PathBuf::from(d).join("config.json")),
        None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json")),
    }
}

/// The Basic credential (base64 of `user:password`) docker's config file
/// holds for `registry`, if any. Credential helpers are not run.
pub fn basic_credentials(registry: &str) -> Option<String> {
    let text = std::fs::read_to_string(docker_config()?).ok()?;
    credentials_in(&text, registry)
}

pub fn credentials_in(config: &str, registry: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        auths: HashMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        auth: Option<String>,
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password: Option<String>,
    }
    let c: Config = serde_json::from_str(config).ok()?;
    // Docker Hub's key is the old index URL; others may carry a scheme.
    let keys: Vec<String> = if registry == crate::reference::DOCKER_HUB {
        vec![
            "https://index.docker.io/v1/".into(),
            "index.docker.io".into(),
            "docker.io".into(),
        ]
    } else {
        vec![
            registry.to_owned(),
            format!("https://{registry}"),
            format!("http://{registry}"),
        ]
    };
    let e = keys.iter().find_map(|k| c.auths.get(k))?;
    match (&e.auth, &e.username, &e.password) {
        (Some(a), _, _) if !a.is_empty() => {
            // Must decode to user:password to be used.
            let raw = base64::engine::general_purpose::STANDARD.decode(a).ok()?;
            String::from_utf8(raw)
                .ok()?
                .contains(':')
                .then(|| a.clone())
        }
        (_, Some(u), Some(p)) => Some(crate::registry::basic(u, p)),
        _ => None,
    }
}

/// The `key="value"` parameters of a `WWW-Authenticate` challenge.
pub fn challenge_params(params: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.insert(key, value.to_owned());
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_are_read_with_commas_inside_quotes() {
        let p = challenge_params(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/python:pull,push""#,
        );
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/python:pull,push");
    }

    #[test]
    fn credentials_come_from_docker_s_config_by_registry() {
        let auth = base64::engine::general_purpose::STANDARD.encode("me:secret");
        let config = format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},"localhost:5000":{{"username":"u","password":"p"}},"bad.io":{{"auth":"bm9jb2xvbg=="}}}}}}"#
        );
        assert_eq!(credentials_in(&config, "docker.io"), Some(auth));
        assert_eq!(
            credentials_in(&config, "localhost:5000"),
            Some(crate::registry::basic("u", "p"))
        );
        assert_eq!(credentials_in(&config, "bad.io"), None, "not user:password");
        assert_eq!(credentials_in(&config, "ghcr.io"), None);
    }
}
