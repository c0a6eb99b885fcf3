//! Credentials as docker keeps them, and registry auth challenges.

use base64::Engine;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// docker's config file: `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`.
fn docker_config() -> Option<PathBuf> {
    match std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        Some(d) => Some(PathBuf::from(d).join("config.json")),
        None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json")),
    }
}

/// How long a credential helper may take (one that waits on a locked
/// keyring must not hang a pull).
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// The Basic credential (base64 of `user:password`) for `registry`, as
/// docker finds it: from its credential helper (`credHelpers` for this
/// registry, else `credsStore`), else from `auths` in its config file.
pub fn basic_credentials(registry: &str) -> Option<String> {
    let text = std::fs::read_to_string(docker_config()?).ok()?;
    match credential_source(&text, registry)? {
        Source::Inline(basic) => Some(basic),
        Source::Helper { helper, server } => match run_helper(&helper, &server) {
            Ok(found) => found,
            Err(why) => {
                tracing::warn!(helper = %helper, registry, "docker credential helper failed: {why}");
                None
            }
        },
    }
}

/// Where a registry's credentials are, by docker's config file.
#[derive(Debug, PartialEq, Eq)]
pub enum Source {
    /// The Basic credential itself (`auths`).
    Inline(String),
    /// `docker-credential-HELPER get`, asked for `server`.
    Helper { helper: String, server: String },
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Config {
    #[serde(default)]
    auths: HashMap<String, Entry>,
    #[serde(default)]
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: HashMap<String, String>,
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

/// The names docker files `registry`'s credentials under (Docker Hub's is
/// the old index URL; others may carry a scheme).
fn config_keys(registry: &str) -> Vec<String> {
    if registry == crate::reference::DOCKER_HUB {
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
    }
}

/// A helper name is a word (it becomes part of a program's name).
fn helper_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

pub fn credential_source(config: &str, registry: &str) -> Option<Source> {
    let c: Config = serde_json::from_str(config).ok()?;
    let keys = config_keys(registry);
    let helper = keys
        .iter()
        .find_map(|k| c.cred_helpers.get(k))
        .filter(|h| helper_name_ok(h))
        .or(c.creds_store.as_ref().filter(|h| helper_name_ok(h)));
    if let Some(helper) = helper {
        return Some(Source::Helper {
            helper: helper.clone(),
            // Docker asks a helper for Docker Hub by the index URL, and
            // for others by the host as written.
            server: keys[0].clone(),
        });
    }
    let e = keys.iter().find_map(|k| c.auths.get(k))?;
    match (&e.auth, &e.username, &e.password) {
        (Some(a), _, _) if !a.is_empty() => {
            // Must decode to user:password to be used.
            let raw = base64::engine::general_purpose::STANDARD.decode(a).ok()?;
            String::from_utf8(raw)
                .ok()?
                .contains(':')
                .then(|| Source::Inline(a.clone()))
        }
        (_, Some(u), Some(p)) => Some(Source::Inline(crate::registry::basic(u, p))),
        _ => None,
    }
}

/// `docker-credential-HELPER get` with `server` on stdin: the Basic
/// credential it knows (None: it has none). An identity token (user
/// `<token>`) is not a password and is not used.
fn run_helper(helper: &str, server: &str) -> Result<Option<String>, String> {
    ask_helper(&format!("docker-credential-{helper}"), server)
}

/// [`run_helper`] of the program `program` (found on PATH, or a path).
fn ask_helper(program: &str, server: &str) -> Result<Option<String>, String> {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    let mut child = Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes());
    }
    // Read while it runs: a helper that writes more than a pipe holds
    // would otherwise wait for us until the timeout. Helpers print a line
    // or two of JSON; past 64 KiB the pipe is closed on it.
    let stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(s) = stdout {
            let _ = s.take(64 * 1024).read_to_end(&mut out);
        }
        out
    });
    let deadline = Instant::now() + HELPER_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{program} gave no answer within {HELPER_TIMEOUT:?}"
                ));
            }
            Err(e) => return Err(format!("{program}: {e}")),
        }
    };
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        // "credentials not found in native keychain": nothing stored.
        return Ok(None);
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let a: Answer = serde_json::from_slice(&out)
        .map_err(|e| format!("{program} answered what is not its JSON: {e}"))?;
    if a.username == "<token>" || a.username.is_empty() {
        return Ok(None);
    }
    Ok(Some(crate::registry::basic(&a.username, &a.secret)))
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
        let inline = |registry: &str| match credential_source(&config, registry) {
            Some(Source::Inline(b)) => Some(b),
            _ => None,
        };
        assert_eq!(inline("docker.io"), Some(auth));
        assert_eq!(
            inline("localhost:5000"),
            Some(crate::registry::basic("u", "p"))
        );
        assert_eq!(inline("bad.io"), None, "not user:password");
        assert_eq!(inline("ghcr.io"), None);
    }

    #[test]
    fn credential_helpers_win_as_docker_decides() {
        let config = r#"{"auths":{"ghcr.io":{},"localhost:5000":{"username":"u","password":"p"}},
            "credsStore":"desktop","credHelpers":{"ghcr.io":"gh","evil.io":"../../bin/sh"}}"#;
        let helper = |h: &str, s: &str| {
            Some(Source::Helper {
                helper: h.into(),
                server: s.into(),
            })
        };
        assert_eq!(
            credential_source(config, "ghcr.io"),
            helper("gh", "ghcr.io")
        );
        // credsStore holds every other registry's, even one listed in auths.
        assert_eq!(
            credential_source(config, "localhost:5000"),
            helper("desktop", "localhost:5000")
        );
        assert_eq!(
            credential_source(config, "docker.io"),
            helper("desktop", "https://index.docker.io/v1/")
        );
        // A helper name that is not a word is never run.
        assert_eq!(
            credential_source(config, "evil.io"),
            helper("desktop", "evil.io")
        );
    }

    #[test]
    fn a_helper_is_asked_for_the_server_and_its_answer_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = |name: &str, body: &str| {
            use std::os::unix::fs::PermissionsExt;
            let p = dir.path().join(format!("docker-credential-{name}"));
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        };
        script(
            "good",
            r#"read server; [ "$1" = get ] && [ "$server" = reg.example:5000 ] || exit 3
echo '{"ServerURL":"reg.example:5000","Username":"me","Secret":"pw"}'"#,
        );
        script(
            "none",
            "echo 'credentials not found in native keychain'; exit 1",
        );
        script(
            "token",
            r#"echo '{"Username":"<token>","Secret":"refresh"}'"#,
        );
        script("junk", "echo not json");
        let run = |h: &str| {
            let program = dir.path().join(format!("docker-credential-{h}"));
            ask_helper(&program.to_string_lossy(), "reg.example:5000")
        };
        assert_eq!(run("good"), Ok(Some(crate::registry::basic("me", "pw"))));
        assert_eq!(run("none"), Ok(None));
        assert_eq!(run("token"), Ok(None));
        assert!(run("junk").is_err_and(|e| e.contains("not its JSON")));
        assert!(run("missing")
            .is_err_and(|e| e.contains("cannot run") && e.contains("docker-credential-missing")));
    }
}
