//! Certificates by SNI: the files a VM's spec names (reloaded when they
//! change on disk) or a self-signed certificate made for its domains.

use crate::manager::Manager;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use skiff_spec::TlsSpec;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

type Stamp = (Option<SystemTime>, Option<SystemTime>);
/// What a key was made from (spec source and file times), and the key.
type CachedKey = (String, Stamp, Arc<CertifiedKey>);

pub struct SniResolver {
    manager: Weak<Manager>,
    /// By VM id: what the key was made from, and the key.
    cache: Mutex<HashMap<String, CachedKey>>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SniResolver")
    }
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

pub use crate::certs::{load_pem, self_signed};

impl SniResolver {
    pub fn new(manager: &Arc<Manager>) -> SniResolver {
        SniResolver {
            manager: Arc::downgrade(manager),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn key_for(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let m = self.manager.upgrade()?;
        let route = m.route_for(host)?;
        let (source, stamp) = match &route.tls {
            TlsSpec::None => return None,
            TlsSpec::SelfSigned => (
                format!("self-signed:{}", route.domains.join(",")),
                (None, None),
            ),
            TlsSpec::Files { cert, key } => (
                format!("files:{}:{}", cert.display(), key.display()),
                (mtime(cert), mtime(key)),
            ),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, st, k)) = cache.get(&route.vm_id) {
            if *s == source && *st == stamp {
                return Some(k.clone());
            }
        }
        let made = match &route.tls {
            TlsSpec::Files { cert, key } => load_pem(cert, key),
            _ => self_signed(&route.domains),
        };
        match made {
            Ok(k) => {
                let k = Arc::new(k);
                cache.insert(route.vm_id, (source, stamp, k.clone()));
                Some(k)
            }
            Err(e) => {
                let error = crate::support::error_chain(&e);
                tracing::warn!(%host, %error, "proxy: no certificate; keeping the last good one");
                // Keep serving the last good one while the files are rewritten.
                cache.get(&route.vm_id).map(|(_, _, k)| k.clone())
            }
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let host = super::routes::host_name(hello.server_name()?);
        self.key_for(&host)
    }
}

pub fn server_config(m: &Arc<Manager>) -> rustls::ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| unreachable_versions())
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver::new(m)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg
}

/// The ring provider supports the default versions; this cannot happen.
fn unreachable_versions() -> rustls::ConfigBuilder<rustls::ServerConfig, rustls::WantsVerifier> {
    panic!("the ring crypto provider lacks TLS 1.2 and 1.3")
}
