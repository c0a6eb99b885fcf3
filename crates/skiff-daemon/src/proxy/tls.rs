//! Certificates by SNI: the files a VM's spec names (reloaded when they
//! change on disk) or a self-signed certificate made for its domains.

use super::super::manager::Manager;
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

/// A certified key from PEM files; the error says which file and why.
pub fn load_pem(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let chain: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not a PEM certificate: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no certificate", cert.display()));
    }
    let private = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| format!("{} is not a PEM private key: {e}", key.display()))?
        .ok_or_else(|| format!("{} holds no private key", key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|e| format!("{}: unsupported key: {e}", key.display()))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|_| {
        format!(
            "{} is not the key of the certificate in {}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(ck)
}

/// A self-signed certificate for `domains`.
pub fn self_signed(domains: &[String]) -> Result<CertifiedKey, String> {
    let made = rcgen::generate_simple_self_signed(domains.to_vec()).map_err(|e| e.to_string())?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(made.key_pair.serialize_der().into());
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(vec![made.cert.der().clone()], signing))
}

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
                tracing::warn!(%host, error = %e, "proxy: no certificate; keeping the last good one");
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
