//! Warm pools of sandboxes: creating, resizing, taking. A background task
//! keeps each pool at its size (booting replacements, removing dead or
//! surplus warm VMs) and destroys taken sandboxes whose time to live has
//! run out. (The HTTP side is in the http module.)

use crate::manager::{Conflict, Invalid, Manager, ManagerError, Missing};
use crate::poolstore::{PoolRecord, SandboxRecord};
use crate::store::{now, VmState};
use skiff_api::CreatePool;
use skiff_spec::{NetMode, NetworkSpec, VmSpec};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const DEFAULT_TTL_SECS: u64 = 600;
pub const MAX_POOL_SIZE: u32 = 256;
/// Pool names leave room for the `-XXXXXX` of their VMs' names.
const MAX_POOL_NAME: usize = skiff_spec::MAX_NAME_LEN - 7;

pub use skiff_api::{Pool as PoolInfo, Sandbox};

/// The longest idle period of a pool's sandboxes.
const MAX_SLEEP_AFTER_SECS: u64 = 30 * 24 * 3600;

fn out_of_range(field: &'static str, value: impl ToString, allowed: String) -> ManagerError {
    Invalid::OutOfRange {
        field,
        value: value.to_string(),
        allowed,
    }
    .into()
}

impl Manager {
    /// Make sure the image `name` is in the cache: pulled now (as docker
    /// does) when it is missing and plainly a registry reference. A name
    /// that is neither is left for the caller's "no image" error.
    pub async fn ensure_image(&self, name: &str) -> Result<(), ManagerError> {
        let cache = crate::paths::cache_dir()
            .map_err(|e| ManagerError::internal("find the image cache", e))?;
        if skiff_oci::find_image(&cache, name).is_some() {
            return Ok(());
        }
        let Some(reference) = skiff_oci::pullable(name) else {
            return Ok(());
        };
        tracing::info!(image = name, "pulling a missing image");
        let pulled = tokio::task::spawn_blocking(move || {
            skiff_oci::pull(
                &skiff_oci::Store::new(&cache),
                &reference,
                &skiff_image::NoProgress,
            )
        })
        .await
        .map_err(|e| ManagerError::internal("run the pull", e))?;
        pulled.map(drop).map_err(|source| ManagerError::Pull {
            image: name.to_owned(),
            source,
        })
    }

    fn pool_template(&self, body: &CreatePool) -> Result<VmSpec, ManagerError> {
        let mut spec = VmSpec::with_defaults(&body.name);
        if let Some(c) = body.cpus {
            if c == 0 || c > skiff_spec::MAX_VCPUS {
                return Err(out_of_range(
                    "cpus",
                    c,
                    format!("1 to {}", skiff_spec::MAX_VCPUS),
                ));
            }
            spec.vcpus = c;
        }
        if let Some(m) = body.memory_mib {
            if !(skiff_spec::MIN_MEMORY_MIB..=skiff_spec::MAX_MEMORY_MIB).contains(&m) {
                return Err(out_of_range(
                    "memory",
                    format!("{m} MiB"),
                    format!(
                        "{} to {} MiB",
                        skiff_spec::MIN_MEMORY_MIB,
                        skiff_spec::MAX_MEMORY_MIB
                    ),
                ));
            }
            spec.memory_mib = m;
        }
        spec.pausable = body.pausable;
        if body.pausable && body.image.is_some() {
            return Err(Invalid::PausableImage.into());
        }
        match body.sleep_after_secs {
            None => {}
            Some(_) if !body.pausable => return Err(Invalid::SleepNotPausable.into()),
            Some(secs) if !(1..=MAX_SLEEP_AFTER_SECS).contains(&secs) => {
                return Err(out_of_range(
                    "sleep_after_secs",
                    secs,
                    format!("1 to {MAX_SLEEP_AFTER_SECS} (30 days)"),
                ))
            }
            Some(secs) => spec.sleep_after_ms = Some(secs * 1000),
        }
        if let Some(image) = &body.image {
            let cache = crate::paths::cache_dir()
                .map_err(|e| ManagerError::internal("find the image cache", e))?;
            if skiff_oci::find_image(&cache, image).is_none() {
                return Err(Invalid::NoImage(image.clone()).into());
            }
            spec.image = Some(image.clone());
        }
        let nic = |mode, network: Option<String>| NetworkSpec {
            mode,
            network,
            address: None,
            egress: skiff_spec::Egress::All,
        };
        match body.net.as_deref() {
            None | Some("none") => {}
            Some("user") => spec.network = vec![nic(NetMode::User, None)],
            Some(name) => {
                if self.store.network(name)?.is_none() {
                    return Err(Invalid::NoNetwork(name.to_owned()).into());
                }
                spec.network = vec![nic(NetMode::Bridge, Some(name.to_owned()))];
            }
        }
        Ok(spec)
    }

    pub fn create_pool(&self, body: &CreatePool) -> Result<PoolRecord, ManagerError> {
        skiff_spec::check_name(&body.name).map_err(|source| Invalid::Name {
            field: "pool name",
            source,
        })?;
        if body.name.len() > MAX_POOL_NAME {
            return Err(Invalid::NameTooLong {
                field: "pool name",
                max: MAX_POOL_NAME,
                why: "its VMs add 7",
            }
            .into());
        }
        if body.size > MAX_POOL_SIZE {
            return Err(out_of_range(
                "size",
                body.size,
                format!("0 to {MAX_POOL_SIZE}"),
            ));
        }
        let ttl_secs = body.ttl_secs.unwrap_or(DEFAULT_TTL_SECS);
        if ttl_secs == 0 {
            return Err(out_of_range("ttl_secs", 0, "at least 1".into()));
        }
        if body.awake.is_some() && !body.pausable {
            return Err(Invalid::AwakeNotPausable.into());
        }
        let pool = PoolRecord {
            name: body.name.clone(),
            template: self.pool_template(body)?,
            size: body.size,
            ttl_secs,
            created_at: now(),
            awake: body.awake,
        };
        self.store.insert_pool(&pool).map_err(|e| match e {
            crate::store::StoreError::Exists(_) => {
                ManagerError::from(Conflict::PoolExists(pool.name.clone()))
            }
            other => other.into(),
        })?;
        self.pool_wake.notify_one();
        Ok(pool)
    }

    pub fn pool_infos(&self) -> Result<Vec<PoolInfo>, ManagerError> {
        let sandboxes = self.store.sandboxes()?;
        let vms = self.store.list()?;
        let state_of = |vm: &str| vms.iter().find(|v| v.name == vm).map(|v| v.state);
        Ok(self
            .store
            .pools()?
            .into_iter()
            .map(|pool| {
                let members: Vec<&SandboxRecord> =
                    sandboxes.iter().filter(|s| s.pool == pool.name).collect();
                let warm = members.iter().filter(|s| !s.taken);
                let in_state = |state| {
                    warm.clone()
                        .filter(|s| state_of(&s.vm) == Some(state))
                        .count()
                };
                let (ready, sleeping) = (in_state(VmState::Running), in_state(VmState::Paused));
                PoolInfo {
                    booting: warm.count() - ready - sleeping,
                    ready,
                    sleeping,
                    awake: pool.awake,
                    taken: members.iter().filter(|s| s.taken).count(),
                    name: pool.name,
                    template: pool.template,
                    size: pool.size,
                    ttl_secs: pool.ttl_secs,
                    created_at: pool.created_at,
                }
            })
            .collect())
    }

    pub async fn remove_pool(self: &Arc<Self>, name: &str) -> Result<(), ManagerError> {
        if self.store.pool(name)?.is_none() {
            return Err(Missing::Pool(name.to_owned()).into());
        }
        self.store.delete_pool(name)?;
        // Warm VMs go now; taken sandboxes live out their time to live.
        for s in self.store.sandboxes()? {
            if s.pool == name && !s.taken {
                let _ = self.remove(&s.vm, true, true).await;
            }
        }
        Ok(())
    }

    pub fn resize_pool(&self, name: &str, size: u32) -> Result<(), ManagerError> {
        if size > MAX_POOL_SIZE {
            return Err(out_of_range("size", size, format!("0 to {MAX_POOL_SIZE}")));
        }
        if !self.store.resize_pool(name, size)? {
            return Err(Missing::Pool(name.to_owned()).into());
        }
        self.pool_wake.notify_one();
        Ok(())
    }

    /// Hand over a ready sandbox of `pool`, waiting up to `wait` for one.
    pub async fn take(
        self: &Arc<Self>,
        pool: &str,
        ttl_secs: Option<u64>,
        wait: Duration,
    ) -> Result<Sandbox, ManagerError> {
        let Some(p) = self.store.pool(pool)? else {
            return Err(Missing::Pool(pool.to_owned()).into());
        };
        let ttl = ttl_secs.unwrap_or(p.ttl_secs).max(1);
        let deadline = Instant::now() + wait;
        loop {
            if let Some(vm) = self.store.take_sandbox(pool, ttl, "running")? {
                self.pool_wake.notify_one();
                // The keeper may be putting it to sleep this very moment.
                if let Err(e) = self.wake_if_asleep(&vm).await {
                    tracing::warn!(vm = %vm, error = %crate::support::error_chain(&e), "a sandbox taken as it fell asleep did not wake; removed");
                    let _ = self.remove(&vm, true, true).await;
                    let _ = self.store.delete_sandbox(&vm);
                    continue;
                }
                // Its idle period (sleep_after) starts at the take, not the boot.
                self.activity.touch(&vm);
                return self.sandbox_info(&vm);
            }
            // None runs: wake a sleeping one (a resume, not a boot).
            if let Some(vm) = self.store.take_sandbox(pool, ttl, "paused")? {
                self.pool_wake.notify_one();
                match self.resume(&vm).await {
                    Ok(_) => return self.sandbox_info(&vm),
                    Err(e) => {
                        tracing::warn!(vm = %vm, error = %crate::support::error_chain(&e), "a sleeping sandbox did not wake; removed");
                        let _ = self.remove(&vm, true, true).await;
                        let _ = self.store.delete_sandbox(&vm);
                        continue;
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(Conflict::PoolEmpty {
                    pool: pool.to_owned(),
                    size: p.size,
                }
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A sandbox booted now from the cached image `image` (a cold start,
    /// where a pool's take is warm), taken at once and removed at its
    /// `ttl_secs` as a pool's. Its name starts with `label`.
    pub async fn boot_sandbox(
        self: &Arc<Self>,
        image: &str,
        label: &str,
        ttl_secs: u64,
    ) -> Result<Sandbox, ManagerError> {
        let cache = crate::paths::cache_dir()
            .map_err(|e| ManagerError::internal("find the image cache", e))?;
        if skiff_oci::find_image(&cache, image).is_none() {
            return Err(Invalid::NoImage(image.to_owned()).into());
        }
        let name = format!("{label}-{}", &crate::paths::new_vm_id()[..6]);
        let mut spec = VmSpec::with_defaults(&name);
        spec.image = Some(image.to_owned());
        self.create(&spec)?;
        // Taken before it boots: never counted as a pool's warm one.
        if let Err(e) = self
            .store
            .insert_taken_sandbox(&name, label, ttl_secs.max(1))
        {
            let _ = self.remove(&name, true, true).await;
            return Err(e.into());
        }
        if let Err(e) = self.start(&name).await {
            let _ = self.remove(&name, true, true).await;
            let _ = self.store.delete_sandbox(&name);
            return Err(e);
        }
        self.sandbox_info(&name)
    }

    fn sandbox_info(&self, vm: &str) -> Result<Sandbox, ManagerError> {
        let sandbox = self
            .store
            .sandbox(vm)?
            .ok_or_else(|| Missing::Sandbox(vm.to_owned()))?;
        Ok(Sandbox {
            address: self.bridge_address(vm).map(|a| a.to_string()),
            vm: sandbox.vm,
            pool: sandbox.pool,
            taken: sandbox.taken,
            expires_at: sandbox.expires_at,
        })
    }

    /// Give a taken sandbox `secs` more to live, from now.
    pub fn extend_ttl(&self, vm: &str, secs: u64) -> Result<Sandbox, ManagerError> {
        if !self.store.extend_sandbox(vm, secs.max(1))? {
            return Err(Missing::TakenSandbox(vm.to_owned()).into());
        }
        self.sandbox_info(vm)
    }

    /// Keep pools at their size and expire taken sandboxes, for ever.
    pub fn spawn_pool_keeper(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                this.keep_pools().await;
                tokio::select! {
                    _ = this.pool_wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        });
    }

    async fn keep_pools(self: &Arc<Self>) {
        let (Ok(pools), Ok(sandboxes), Ok(vms)) = (
            self.store.pools(),
            self.store.sandboxes(),
            self.store.list(),
        ) else {
            return;
        };
        let t = now();
        for s in &sandboxes {
            let vm = vms.iter().find(|v| v.name == s.vm);
            let expired = s.taken && s.expires_at.is_some_and(|e| e <= t);
            // A warm VM that died, or whose pool is gone, is not worth keeping.
            let dead = !s.taken
                && vm.is_none_or(|v| matches!(v.state, VmState::Exited | VmState::Stopped));
            let orphan = !s.taken && !pools.iter().any(|p| p.name == s.pool);
            if expired || dead || orphan {
                if vm.is_some() {
                    let _ = self.remove(&s.vm, true, true).await;
                }
                let _ = self.store.delete_sandbox(&s.vm);
            }
        }
        for pool in pools {
            let Ok(sandboxes) = self.store.sandboxes() else {
                return;
            };
            let warm: Vec<&SandboxRecord> = sandboxes
                .iter()
                .filter(|s| s.pool == pool.name && !s.taken)
                .collect();
            let size = pool.size as usize;
            for extra in warm.iter().skip(size) {
                let _ = self.remove(&extra.vm, true, true).await;
                let _ = self.store.delete_sandbox(&extra.vm);
            }
            self.put_to_sleep(&pool, &warm, &vms).await;
            if warm.len() < size {
                // One at a time: the loop comes back at once for the next.
                if let Err(e) = self.add_to_pool(&pool).await {
                    tracing::warn!(pool = %pool.name, error = %crate::support::error_chain(&e), "cannot add a sandbox");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                } else {
                    self.pool_wake.notify_one();
                }
            }
        }
    }

    /// Pause a running warm sandbox beyond the pool's `awake` count (one
    /// per round).
    async fn put_to_sleep(
        self: &Arc<Self>,
        pool: &PoolRecord,
        warm: &[&SandboxRecord],
        vms: &[crate::store::VmRecord],
    ) {
        let Some(awake) = pool.awake else {
            return;
        };
        let running: Vec<&str> = warm
            .iter()
            .filter(|s| {
                vms.iter()
                    .any(|v| v.name == s.vm && v.state == VmState::Running)
            })
            .map(|s| s.vm.as_str())
            .collect();
        if let Some(vm) = running.get(awake as usize) {
            if let Err(e) = self.put_sandbox_to_sleep(vm).await {
                tracing::warn!(vm = %vm, error = %crate::support::error_chain(&e), "cannot put a sandbox to sleep");
            }
        }
    }

    async fn add_to_pool(self: &Arc<Self>, pool: &PoolRecord) -> Result<(), ManagerError> {
        let name = format!("{}-{}", pool.name, &crate::paths::new_vm_id()[..6]);
        let mut spec = pool.template.clone();
        spec.name = name.clone();
        self.create(&spec)?;
        self.store.insert_sandbox(&name, &pool.name)?;
        if let Err(e) = self.start(&name).await {
            let _ = self.remove(&name, true, true).await;
            let _ = self.store.delete_sandbox(&name);
            return Err(e);
        }
        Ok(())
    }
}
