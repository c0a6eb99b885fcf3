//! HTTP health checks of service VMs: GET the spec's path on the VM's
//! address every interval; after `unhealthy_after` failures in a row the VM
//! is unhealthy (the proxy answers 503) and, unless its restart policy is
//! "no", restarted. One success makes it healthy again.

use crate::manager::Manager;
use crate::store::VmState;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

#[derive(Debug, Default, Clone)]
pub struct HealthState {
    failures: u32,
    unhealthy: bool,
    next: Option<Instant>,
}

pub type HealthMap = std::sync::Mutex<HashMap<String, HealthState>>;

/// Why a health check failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot connect")]
    Connect(#[source] std::io::Error),
    #[error("the HTTP exchange failed")]
    Http(#[source] hyper::Error),
    #[error("the request is invalid")]
    Request(#[source] hyper::http::Error),
    #[error("status {0}")]
    Status(hyper::StatusCode),
    #[error("no answer in {0:?}")]
    Timeout(Duration),
}

/// One GET; Ok if the answer is 2xx or 3xx.
async fn probe(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let attempt = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(ProbeError::Connect)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ProbeError::Http)?;
        tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, host)
            .header(hyper::header::USER_AGENT, "skiff-health-check")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(ProbeError::Request)?;
        let resp = sender.send_request(req).await.map_err(ProbeError::Http)?;
        let s = resp.status();
        if s.is_success() || s.is_redirection() {
            Ok(())
        } else {
            Err(ProbeError::Status(s))
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ProbeError::Timeout(timeout))?
}

impl Manager {
    pub fn is_unhealthy(&self, vm: &str) -> bool {
        let h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        h.get(vm).is_some_and(|s| s.unhealthy)
    }

    pub fn spawn_health_checks(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                this.check_due().await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
    }

    async fn check_due(self: &Arc<Self>) {
        let Ok(vms) = self.store.list() else { return };
        let now = Instant::now();
        for v in vms {
            let Some((http, check)) = v
                .spec
                .http
                .as_ref()
                .and_then(|h| Some((h, h.health.as_ref()?)))
            else {
                continue;
            };
            if v.state != VmState::Running {
                // A stopped VM starts its next life healthy.
                self.health
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&v.name);
                continue;
            }
            let due = {
                let mut map = self.health.lock().unwrap_or_else(|p| p.into_inner());
                let st = map.entry(v.name.clone()).or_default();
                match st.next {
                    Some(t) if t > now => false,
                    _ => {
                        st.next = Some(now + Duration::from_millis(check.interval_ms));
                        true
                    }
                }
            };
            let Some(addr) = self.bridge_address(&v.name).filter(|_| due) else {
                continue;
            };
            let this = self.clone();
            let (name, host, check) = (v.name.clone(), http.domains[0].clone(), check.clone());
            let port = http.port;
            let policy_restarts = !matches!(v.spec.restart, skiff_spec::RestartPolicy::No);
            tokio::spawn(async move {
                let result = probe(
                    SocketAddr::from((addr, port)),
                    &host,
                    &check.path,
                    Duration::from_millis(check.timeout_ms),
                )
                .await;
                let became_unhealthy = {
                    let mut map = this.health.lock().unwrap_or_else(|p| p.into_inner());
                    let st = map.entry(name.clone()).or_default();
                    match &result {
                        Ok(()) => {
                            st.failures = 0;
                            st.unhealthy = false;
                            false
                        }
                        Err(_) => {
                            st.failures += 1;
                            let now_bad = st.failures >= check.unhealthy_after && !st.unhealthy;
                            st.unhealthy |= now_bad;
                            now_bad
                        }
                    }
                };
                if became_unhealthy {
                    let why = result
                        .err()
                        .map(|e| crate::support::error_chain(&e))
                        .unwrap_or_default();
                    tracing::warn!(
                        vm = %name,
                        path = %check.path,
                        failures = check.unhealthy_after,
                        error = %why,
                        "unhealthy; restarting it if its policy allows"
                    );
                    if policy_restarts {
                        let _ = this.store.count_restart(&name);
                        let _ = this.restart(&name).await;
                    }
                }
            });
        }
    }
}
