//! A real OCI registry for tests: Debian's docker-registry (the CNCF
//! distribution registry) on 127.0.0.1 with a temporary directory, wanting
//! [`USER`]'s password either directly (htpasswd, basic auth) or through a
//! token server (the bearer flow of Docker Hub and most registries): the
//! registry sends clients to the token server, which checks the password
//! and signs a JWT (RS256, with its certificate in `x5c`) granting what was
//! asked for; the registry verifies it against that certificate.

use super::stderr;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const USER: &str = "tester";
pub const PASSWORD: &str = "s3cret";
const SERVICE: &str = "skiff-test-registry";
const ISSUER: &str = "skiff-test-token-server";

pub fn ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what}: {}", stderr(&out));
    out
}

/// `skopeo copy --quiet FROM TO`, with `extra` options first.
pub fn skopeo_copy(extra: &[&str], from: &str, to: &str) {
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--quiet"]).args(extra).args([from, to]);
    ok(&mut cmd, &format!("skopeo copy {from} {to}"));
}

pub struct Registry {
    child: Child,
    pub port: u16,
    /// The token server's request lines (token mode only).
    pub token_requests: Option<Arc<Mutex<Vec<String>>>>,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Basic auth against an htpasswd file.
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let htpasswd = ok(
            Command::new("htpasswd").args(["-Bbn", USER, PASSWORD]),
            "htpasswd",
        );
        std::fs::write(dir.path().join("htpasswd"), &htpasswd.stdout).expect("htpasswd");
        let auth = format!(
            "  htpasswd:\n    realm: skiff-test\n    path: {}/htpasswd\n",
            dir.path().display()
        );
        Registry::serve(dir, &auth, None)
    }

    /// Bearer tokens from a token server of the test's own.
    pub fn start_with_tokens() -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("token.key");
        let cert = dir.path().join("token.pem");
        ok(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args(["-subj", "/CN=skiff-test-token-server", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert),
            "openssl req",
        );
        let (token_port, requests) = token_server(&key, &cert);
        let auth = format!(
            "  token:\n    realm: http://127.0.0.1:{token_port}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            cert.display()
        );
        Registry::serve(dir, &auth, Some(requests))
    }

    fn serve(
        dir: tempfile::TempDir,
        auth: &str,
        token_requests: Option<Arc<Mutex<Vec<String>>>>,
    ) -> Registry {
        let port = super::free_port();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\nhttp:\n  addr: 127.0.0.1:{port}\nauth:\n{auth}",
            d = dir.path().display()
        );
        std::fs::write(dir.path().join("config.yml"), config).expect("config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("registry.log")).expect("log"))
            .spawn()
            .expect("docker-registry (scripts/setup.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the registry did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            child,
            port,
            token_requests,
            _dir: dir,
        }
    }

    /// Push the tag `tag` of the OCI layout to `to` (a repository:tag);
    /// the full reference.
    pub fn push(&self, layout: &Path, tag: &str, to: &str) -> String {
        let dest = format!("127.0.0.1:{}/{to}", self.port);
        skopeo_copy(
            &[
                "--dest-tls-verify=false",
                "--dest-creds",
                &format!("{USER}:{PASSWORD}"),
            ],
            &format!("oci:{}:{tag}", layout.display()),
            &format!("docker://{dest}"),
        );
        dest
    }

    /// A docker config directory (for `DOCKER_CONFIG`) holding the
    /// password, as `docker login` leaves it.
    pub fn docker_config(&self, dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).expect("mkdir");
        let auth = STANDARD.encode(format!("{USER}:{PASSWORD}"));
        std::fs::write(
            dir.join("config.json"),
            format!(
                r#"{{"auths":{{"127.0.0.1:{}":{{"auth":"{auth}"}}}}}}"#,
                self.port
            ),
        )
        .expect("config.json");
        dir.to_owned()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `%XX` decoded (a query's values).
fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => match u8::from_str_radix(&String::from_utf8_lossy(hex), 16) {
                Ok(v) => {
                    out.push(v);
                    i += 3;
                }
                Err(_) => {
                    out.push(b'%');
                    i += 1;
                }
            },
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A JWT the registry accepts: RS256 by `key`, `cert` in `x5c`, granting
/// each `repository:NAME:ACTIONS` scope asked for.
fn sign_token(key: &Path, cert: &Path, scopes: &[String]) -> String {
    let pem = std::fs::read_to_string(cert).expect("cert");
    let der_b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [der_b64]});
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|s| {
            let mut parts = s.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(serde_json::json!({
                "type": kind, "name": name,
                "actions": actions.split(',').collect::<Vec<_>>(),
            }))
        })
        .collect();
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": USER, "aud": SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now,
        "jti": format!("{now}-{}", scopes.len()), "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut openssl = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl dgst");
    openssl
        .stdin
        .take()
        .expect("stdin")
        .write_all(signing_input.as_bytes())
        .expect("sign");
    let signature = openssl.wait_with_output().expect("openssl dgst");
    assert!(signature.status.success(), "openssl dgst failed");
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(&signature.stdout)
    )
}

/// The token server: `GET /token?service=…&scope=…` with [`USER`]'s basic
/// credentials gets a token; without them, 401. Returns its port and the
/// request lines it saw.
fn token_server(key: &Path, cert: &Path) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let (key, cert) = (key.to_owned(), cert.to_owned());
    let want = format!("Basic {}", STANDARD.encode(format!("{USER}:{PASSWORD}")));
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).is_ok_and(|n| n == 1) {
                head.push(b[0]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let line = head.lines().next().unwrap_or("").to_owned();
            log.lock().expect("lock").push(line.clone());
            // The header's name in any case, its value exactly.
            let authorized = head.lines().any(|l| {
                l.split_once(':').is_some_and(|(name, value)| {
                    name.eq_ignore_ascii_case("authorization") && value.trim() == want
                })
            });
            let query = line
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.split_once('?'))
                .map_or("", |(_, q)| q)
                .to_owned();
            let scopes: Vec<String> = query
                .split('&')
                .filter_map(|kv| kv.strip_prefix("scope="))
                .map(percent_decoded)
                .flat_map(|s| s.split(' ').map(str::to_owned).collect::<Vec<_>>())
                .collect();
            let (status, body) = if authorized {
                let token = sign_token(&key, &cert, &scopes);
                (
                    "200 OK",
                    format!(r#"{{"token":"{token}","access_token":"{token}","expires_in":300}}"#),
                )
            } else {
                (
                    "401 Unauthorized",
                    r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#.to_owned(),
                )
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, seen)
}
