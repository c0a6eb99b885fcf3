//! Pulling from an OCI distribution registry: the manifest (through an
//! index to this host's platform), then each blob not yet stored, with the
//! token flow registries use (`WWW-Authenticate: Bearer realm=…`), basic
//! credentials from docker's config file, and downloads resumed where an
//! interrupted pull stopped.

use crate::manifest::{parse_document, pick_platform, Document, ACCEPT};
use crate::store::{short, BlobLock, Store};
use crate::{OciError, Reference};
use base64::Engine;
use reqwest::blocking::{Client, Response};
use reqwest::header::{
    HeaderMap, ACCEPT as ACCEPT_HEADER, AUTHORIZATION, CONTENT_RANGE, CONTENT_TYPE, RANGE,
    WWW_AUTHENTICATE,
};
use reqwest::StatusCode;
use skiff_image::human_size;
use skiff_image::{ImageInfo, ImageSource, Progress};
use std::time::Duration;

/// Tries per request when the registry fails in passing (5xx, 429, a
/// dropped connection); a blob resumes from what arrived.
const ATTEMPTS: u32 = 3;

/// How long a registry may stay silent: waiting for an answer, or between
/// two reads of a body (a stalled transfer fails, and resumes on retry).
/// Not a limit on a whole download, which may take as long as it needs.
const STALL: Duration = Duration::from_secs(60);

pub struct Registry {
    client: Client,
    reference: Reference,
    shown: String,
    base: String,
    /// The Basic credential for this registry: looked up (docker's config,
    /// its credential helper) at the first challenge, not before, so an
    /// anonymous pull never runs a helper.
    basic: Option<Option<String>>,
    token: Option<String>,
}

/// Pull `reference` into `store` and assemble it.
pub fn pull(
    store: &Store,
    reference: &Reference,
    progress: &dyn Progress,
) -> Result<ImageInfo, OciError> {
    let mut r = Registry::new(reference)?;
    progress.step(&format!("resolving {}", r.shown));
    let (digest, media, body) = r.manifest(reference.manifest_ref())?;
    let (digest, manifest) = match parse_document(&r.shown, media.as_deref(), &body)? {
        Document::Manifest(m) => (digest, m),
        Document::Index(i) => {
            let d = pick_platform(&r.shown, &i)?.clone();
            let (digest, media, body) = r.manifest(&d.digest)?;
            match parse_document(&r.shown, media.as_deref(), &body)? {
                Document::Manifest(m) => (digest, m),
                Document::Index(_) => {
                    return Err(OciError::BadManifest {
                        image: r.shown.clone(),
                        why: "an index inside an index".into(),
                    })
                }
            }
        }
    };
    let _adding = store.adding()?;
    let blobs = std::iter::once(&manifest.config).chain(&manifest.layers);
    let n = manifest.layers.len();
    for (i, d) in blobs.enumerate() {
        if i == 1 {
            // The config is in: an image for another platform stops here,
            // before its layers are downloaded.
            store.image_config(&r.shown, &manifest)?;
        }
        let lock = store.lock_blob(&d.digest, progress)?;
        if store.has_blob(&d.digest) {
            continue;
        }
        if i > 0 {
            progress.step(&format!(
                "pulling layer {i}/{n} {} ({})",
                short(&d.digest),
                human_size(d.size)
            ));
        }
        r.blob(store, &lock, d.size, progress)?;
    }
    let source = ImageSource::Pull {
        reference: r.shown.clone(),
        digest: digest.clone(),
    };
    store.assemble(&r.shown, source, &digest, &manifest, progress)
}

impl Registry {
    fn new(reference: &Reference) -> Result<Registry, OciError> {
        Registry::with_stall(reference, STALL)
    }

    fn with_stall(reference: &Reference, stall: Duration) -> Result<Registry, OciError> {
        let shown = reference.familiar();
        let host = reference.api_host();
        let scheme = if plain_http(host) { "http" } else { "https" };
        let client = Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .tcp_keepalive(Duration::from_secs(30))
            // In the blocking client this bounds each wait, not the whole
            // transfer (reqwest applies it to the send and to every read).
            .timeout(stall)
            .user_agent(concat!("skiff/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| OciError::Registry {
                image: shown.clone(),
                why: format!("cannot make an HTTP client: {e}"),
            })?;
        Ok(Registry {
            client,
            base: format!("{scheme}://{host}/v2/{}", reference.repository),
            basic: None,
            reference: reference.clone(),
            shown,
            token: None,
        })
    }

    /// The Basic credential, looked up once.
    fn credentials(&mut self) -> Option<String> {
        let registry = self.reference.registry.clone();
        self.basic
            .get_or_insert_with(|| crate::auth::basic_credentials(&registry))
            .clone()
    }

    /// What to do about a refusal, by whether credentials were sent.
    fn credentials_advice(&self) -> &'static str {
        if matches!(self.basic, Some(Some(_))) {
            "the credentials in docker's config file were refused"
        } else {
            "it does not exist, or it needs credentials: log in with `docker login` (skiff reads ~/.docker/config.json and runs its credential helpers)"
        }
    }

    fn fail(&self, why: impl Into<String>) -> OciError {
        OciError::Registry {
            image: self.shown.clone(),
            why: why.into(),
        }
    }

    /// GET `url` with `headers`, answering an auth challenge once, and
    /// retrying what fails in passing.
    fn get(&mut self, url: &str, headers: HeaderMap) -> Result<Response, OciError> {
        let mut challenged = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self.client.get(url).headers(headers.clone());
            if let Some(t) = &self.token {
                req = req.header(AUTHORIZATION, format!("Bearer {t}"));
            } else if challenged {
                if let Some(b) = self.credentials() {
                    req = req.header(AUTHORIZATION, format!("Basic {b}"));
                }
            }
            let resp = match req.send() {
                Ok(r) => r,
                Err(e) if attempt < ATTEMPTS => {
                    tracing::debug!(error = %e, "registry request failed; retrying");
                    std::thread::sleep(backoff(attempt));
                    continue;
                }
                Err(e) => return Err(self.fail(format!("{url}: {e}"))),
            };
            match resp.status() {
                StatusCode::UNAUTHORIZED if !challenged => {
                    challenged = true;
                    let challenge = resp
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    self.authenticate(&challenge)?;
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    let how = self.credentials_advice();
                    return Err(self.fail(format!("{} {url}: {how}", resp.status())));
                }
                s if (s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error())
                    && attempt < ATTEMPTS =>
                {
                    std::thread::sleep(backoff(attempt));
                }
                _ => return Ok(resp),
            }
        }
    }

    /// Answer a `WWW-Authenticate` challenge: a bearer token from the
    /// realm, or basic credentials.
    fn authenticate(&mut self, challenge: &str) -> Result<(), OciError> {
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            if self.credentials().is_none() {
                return Err(self.fail(self.credentials_advice()));
            }
            return Ok(());
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(self.fail(format!(
                "it asks for {scheme} authentication, which skiff does not speak"
            )));
        }
        let p = crate::auth::challenge_params(params);
        let realm = p
            .get("realm")
            .ok_or_else(|| self.fail("its bearer challenge names no realm"))?
            .clone();
        let scope = p
            .get("scope")
            .cloned()
            .unwrap_or_else(|| format!("repository:{}:pull", self.reference.repository));
        let mut req = self.client.get(&realm).query(&[("scope", scope.as_str())]);
        if let Some(service) = p.get("service") {
            req = req.query(&[("service", service.as_str())]);
        }
        // The password goes to the realm only over HTTPS, or to a realm as
        // local as a plain-HTTP registry may be: a challenge must not send
        // it in clear text across the network.
        if realm_may_have_credentials(&realm) {
            if let Some(b) = self.credentials() {
                req = req.header(AUTHORIZATION, format!("Basic {b}"));
            }
        } else {
            tracing::warn!(%realm, "not sending credentials to a plain-HTTP token realm");
        }
        let resp = req
            .send()
            .map_err(|e| self.fail(format!("token from {realm}: {e}")))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(self.fail(format!(
                "its token server {realm} answered {status}: {}",
                self.credentials_advice()
            )));
        }
        if !status.is_success() {
            return Err(self.fail(format!("token from {realm}: {status}")));
        }
        #[derive(serde::Deserialize)]
        struct Token {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
        }
        let body = read_limited(resp, 1 << 20)
            .map_err(|e| self.fail(format!("token from {realm}: {e}")))?;
        let t: Token = serde_json::from_slice(&body)
            .map_err(|e| self.fail(format!("token from {realm}: {e}")))?;
        self.token = Some(
            t.token
                .or(t.access_token)
                .ok_or_else(|| self.fail(format!("{realm} answered without a token")))?,
        );
        Ok(())
    }

    /// The manifest `what` (a tag or digest): its digest, media type, bytes.
    fn manifest(&mut self, what: &str) -> Result<(String, Option<String>, Vec<u8>), OciError> {
        let mut h = HeaderMap::new();
        h.insert(
            ACCEPT_HEADER,
            ACCEPT.parse().map_err(|_| self.fail("accept header"))?,
        );
        let url = format!("{}/manifests/{what}", self.base);
        let resp = self.get(&url, h)?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => {
                return Err(self.fail(format!("no manifest {what} (is the tag or digest right?)")))
            }
            s => return Err(self.fail(format!("{s} for the manifest {what}"))),
        }
        let media = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = read_limited(resp, 4 << 20)
            .map_err(|e| self.fail(format!("the manifest {what}: {e}")))?;
        let digest = format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body))
        );
        // Asked by digest, the bytes must be those.
        if what.starts_with("sha256:") && digest != what {
            return Err(OciError::BlobMismatch {
                image: self.shown.clone(),
                blob: what.to_owned(),
                why: format!("the manifest's bytes hash to {digest}"),
            });
        }
        Ok((digest, media, body))
    }

    /// Download blob `digest` into the store, resuming a partial one.
    fn blob(
        &mut self,
        store: &Store,
        lock: &BlobLock,
        size: u64,
        progress: &dyn Progress,
    ) -> Result<(), OciError> {
        let digest = lock.digest();
        let url = format!("{}/blobs/{digest}", self.base);
        let mut last = None;
        for attempt in 1..=ATTEMPTS {
            let have = store.partial_len(digest);
            let mut h = HeaderMap::new();
            if have > 0 && have < size {
                let range = format!("bytes={have}-")
                    .parse()
                    .map_err(|_| self.fail("range header"))?;
                h.insert(RANGE, range);
            }
            let resp = self.get(&url, h)?;
            let resume = match resp.status() {
                StatusCode::PARTIAL_CONTENT => {
                    // The bytes must continue exactly where the partial
                    // file ends; any other range would be spliced in wrong.
                    let range = resp
                        .headers()
                        .get(CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    if !range.starts_with(&format!("bytes {have}-")) {
                        store.discard_partial(digest);
                        last = Some(OciError::Transfer {
                            image: self.shown.clone(),
                            blob: digest.to_owned(),
                            why: format!(
                                "asked for bytes {have}- and got the range {range:?}; starting over"
                            ),
                        });
                        continue;
                    }
                    true
                }
                s if s.is_success() => false,
                StatusCode::NOT_FOUND => return Err(self.fail(format!("no blob {digest}"))),
                s => return Err(self.fail(format!("{s} for blob {digest}"))),
            };
            match store.put_blob(lock, &self.shown, size, resume, resp, progress) {
                Ok(_) => return Ok(()),
                Err(e @ OciError::Transfer { .. }) if attempt < ATTEMPTS => {
                    last = Some(e);
                    std::thread::sleep(backoff(attempt));
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| self.fail(format!("blob {digest} did not arrive"))))
    }
}

/// A response body of at most `limit` bytes, refused (not read on) past
/// that: a registry's document is small, and a hostile one must not fill
/// the daemon's memory.
fn read_limited(resp: Response, limit: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(format!("it is over {} KiB", limit >> 10));
    }
    let mut body = Vec::new();
    resp.take(limit + 1)
        .read_to_end(&mut body)
        .map_err(|e| e.to_string())?;
    if body.len() as u64 > limit {
        return Err(format!("it is over {} KiB", limit >> 10));
    }
    Ok(body)
}

/// Whether credentials may go to a token realm: over HTTPS, or plain HTTP
/// to a host that may be reached so (loopback, or listed as insecure).
fn realm_may_have_credentials(realm: &str) -> bool {
    if realm.starts_with("https://") {
        return true;
    }
    realm
        .strip_prefix("http://")
        .map(|rest| rest.split(['/', '?']).next().unwrap_or(""))
        .is_some_and(plain_http)
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(300 << attempt.min(5))
}

/// Registries reached over plain HTTP: loopback ones (as docker allows),
/// and those `SKIFF_INSECURE_REGISTRIES` (comma-separated hosts) names.
pub fn plain_http(host: &str) -> bool {
    let name = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let ip = name.trim_start_matches('[').trim_end_matches(']');
    let loopback = name == "localhost"
        || ip
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback());
    let listed = std::env::var("SKIFF_INSECURE_REGISTRIES")
        .map(|v| v.split(',').any(|h| h.trim() == host))
        .unwrap_or(false);
    loopback || listed
}

/// `user:password` as a Basic credential.
pub fn basic(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// An HTTP request's head, read a byte at a time (the fake registries
    /// below answer one request per connection).
    fn read_head(s: &mut std::net::TcpStream) -> String {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).is_ok_and(|n| n == 1) {
            head.push(b[0]);
        }
        String::from_utf8_lossy(&head).into_owned()
    }

    /// A registry that wants a bearer token from its realm (the flow
    /// Docker Hub and most registries use), on loopback; it records the
    /// requests it saw.
    fn token_registry() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let head = read_head(&mut s);
                let line = head.lines().next().unwrap_or("").to_owned();
                let bearer = head
                    .to_ascii_lowercase()
                    .contains("authorization: bearer t0k3n");
                log.lock().expect("lock").push(line.clone());
                let (status, extra, body) = if line.contains("/token?") {
                    ("200 OK", String::new(), r#"{"token":"t0k3n"}"#.to_owned())
                } else if !bearer {
                    let challenge = format!(
                        "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"test\",scope=\"repository:team/app:pull\"\r\n"
                    );
                    ("401 Unauthorized", challenge, String::new())
                } else {
                    let ct = format!("Content-Type: {}\r\n", crate::manifest::OCI_MANIFEST);
                    (
                        "200 OK",
                        ct,
                        r#"{"config":{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":1},"layers":[]}"#.to_owned(),
                    )
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (port, seen)
    }

    #[test]
    fn a_bearer_challenge_is_answered_with_a_token_from_its_realm() {
        let (port, seen) = token_registry();
        let r = Reference::parse(&format!("127.0.0.1:{port}/team/app:1")).expect("ref");
        let mut reg = Registry::new(&r).expect("client");
        let (_, media, body) = reg.manifest("1").expect("manifest");
        assert_eq!(media.as_deref(), Some(crate::manifest::OCI_MANIFEST));
        assert!(String::from_utf8_lossy(&body).contains("layers"));
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(
            seen[1].contains("/token?")
                && seen[1].contains("scope=repository%3Ateam%2Fapp%3Apull")
                && seen[1].contains("service=test"),
            "{seen:?}"
        );
    }

    #[test]
    fn passwords_go_to_token_realms_over_https_or_loopback_only() {
        assert!(realm_may_have_credentials("https://auth.docker.io/token"));
        assert!(realm_may_have_credentials("http://127.0.0.1:5001/token"));
        assert!(realm_may_have_credentials("http://localhost/token?x=1"));
        assert!(!realm_may_have_credentials("http://auth.example.com/token"));
        assert!(!realm_may_have_credentials("ftp://auth.example.com/token"));
    }

    #[test]
    fn only_loopback_or_listed_registries_are_plain_http() {
        assert!(plain_http("localhost:5000"));
        assert!(plain_http("127.0.0.1:5000"));
        assert!(plain_http("[::1]:5000"));
        assert!(!plain_http("registry-1.docker.io"));
        assert!(!plain_http("ghcr.io"));
        assert!(!plain_http("localhost.example.com"));
        assert!(!plain_http("127.evil.example:5000"));
    }

    /// The test blob: 100 000 bytes that are not all alike, and its digest.
    fn test_blob() -> (Vec<u8>, String) {
        let blob: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let digest = format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&blob))
        );
        (blob, digest)
    }

    /// A registry on loopback whose `answer` gets each connection's number,
    /// the start of its `Range` (if any) and the stream; the ranges asked
    /// for are recorded.
    fn blob_registry(
        answer: impl Fn(usize, Option<usize>, &mut std::net::TcpStream) + Send + Sync + 'static,
    ) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<Option<usize>>>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let ranges = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = ranges.clone();
        let answer = std::sync::Arc::new(answer);
        std::thread::spawn(move || {
            for (n, mut s) in listener.incoming().flatten().enumerate() {
                let head = read_head(&mut s).to_ascii_lowercase();
                let from = head
                    .lines()
                    .find_map(|l| l.strip_prefix("range: bytes="))
                    .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok());
                seen.lock().expect("lock").push(from);
                // One thread each: a stalled answer does not hold up the next.
                let answer = answer.clone();
                std::thread::spawn(move || answer(n, from, &mut s));
            }
        });
        (port, ranges)
    }

    fn send(s: &mut std::net::TcpStream, status: &str, headers: &str, body: &[u8]) {
        let _ = write!(s, "HTTP/1.1 {status}\r\n{headers}Connection: close\r\n\r\n");
        let _ = s.write_all(body);
    }

    fn fetch(
        port: u16,
        stall: Duration,
        digest: &str,
    ) -> (Store, tempfile::TempDir, Result<(), OciError>) {
        let cache = tempfile::tempdir().expect("tempdir");
        let store = Store::new(cache.path());
        let r = Reference::parse(&format!("127.0.0.1:{port}/team/app:1")).expect("ref");
        let mut reg = Registry::with_stall(&r, stall).expect("client");
        let got = store
            .lock_blob(digest, &skiff_image::NoProgress)
            .and_then(|lock| reg.blob(&store, &lock, 100_000, &skiff_image::NoProgress));
        (store, cache, got)
    }

    #[test]
    fn a_blob_cut_off_mid_transfer_is_resumed_by_range_and_verified() {
        let (blob, digest) = test_blob();
        let served = blob.clone();
        let (port, ranges) = blob_registry(move |n, from, s| match (n, from) {
            // The first answer promises everything and stops early.
            (0, _) => send(s, "200 OK", "Content-Length: 100000\r\n", &served[..40_000]),
            (_, Some(from)) => {
                let cr = format!(
                    "Content-Length: {}\r\nContent-Range: bytes {from}-99999/100000\r\n",
                    100_000 - from
                );
                send(s, "206 Partial Content", &cr, &served[from..]);
            }
            (_, None) => send(s, "500 Internal Server Error", "Content-Length: 0\r\n", b""),
        });
        let (store, _cache, got) = fetch(port, STALL, &digest);
        got.expect("resumed");
        assert_eq!(store.read_blob(&digest).expect("stored"), blob);
        assert_eq!(*ranges.lock().expect("lock"), [None, Some(40_000)]);
    }

    #[test]
    fn a_range_answered_from_elsewhere_is_not_spliced_in() {
        let (blob, digest) = test_blob();
        let served = blob.clone();
        let (port, ranges) = blob_registry(move |n, _, s| match n {
            0 => send(s, "200 OK", "Content-Length: 100000\r\n", &served[..40_000]),
            // Asked for 40000-, it sends everything from byte 0 as a 206.
            1 => send(
                s,
                "206 Partial Content",
                "Content-Length: 100000\r\nContent-Range: bytes 0-99999/100000\r\n",
                &served,
            ),
            _ => send(s, "200 OK", "Content-Length: 100000\r\n", &served),
        });
        let (store, _cache, got) = fetch(port, STALL, &digest);
        got.expect("started over");
        assert_eq!(store.read_blob(&digest).expect("stored"), blob);
        assert_eq!(*ranges.lock().expect("lock"), [None, Some(40_000), None]);
    }

    #[test]
    fn a_stalled_transfer_fails_instead_of_hanging_and_keeps_what_arrived() {
        let (blob, digest) = test_blob();
        let (port, ranges) = blob_registry(move |_, from, s| {
            let from = from.unwrap_or(0);
            let cr = format!(
                "Content-Length: {}\r\nContent-Range: bytes {from}-99999/100000\r\n",
                100_000 - from
            );
            let status = if from > 0 {
                "206 Partial Content"
            } else {
                "200 OK"
            };
            // 10 000 bytes, then silence with the connection open.
            send(s, status, &cr, &blob[from..from + 10_000]);
            std::thread::sleep(Duration::from_secs(30));
        });
        let started = std::time::Instant::now();
        let (store, _cache, got) = fetch(port, Duration::from_secs(1), &digest);
        let e = got.expect_err("stalled").to_string();
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
        assert!(
            e.contains("did not arrive whole") && e.contains("resume"),
            "{e}"
        );
        // Each try resumed where the last one stopped.
        assert_eq!(
            *ranges.lock().expect("lock"),
            [None, Some(10_000), Some(20_000)]
        );
        assert_eq!(store.partial_len(&digest), 30_000);
    }
}
