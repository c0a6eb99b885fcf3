//! Pools and their sandboxes in the state database. A sandbox is a VM of a
//! pool: warm (booted, waiting) until taken, then taken until it is removed
//! or its time to live runs out. Taking is one UPDATE on a warm row, so two
//! takers can never get the same sandbox.

use crate::store::{now, Store, StoreError};
use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use skiff_spec::VmSpec;

#[derive(Debug, Clone, Serialize)]
pub struct PoolRecord {
    pub name: String,
    /// The spec of each sandbox (its name is replaced per VM).
    pub template: VmSpec,
    pub size: u32,
    /// Time to live of a taken sandbox.
    pub ttl_secs: u64,
    pub created_at: i64,
    /// For pausable sandboxes: how many ready ones stay running; the rest
    /// sleep (paused) until taken. None: all run.
    pub awake: Option<u32>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SandboxRecord {
    pub vm: String,
    pub pool: String,
    pub taken: bool,
    /// Unix seconds; only for taken sandboxes.
    pub expires_at: Option<i64>,
}

impl Store {
    pub fn insert_pool(&self, pool: &PoolRecord) -> Result<(), StoreError> {
        let template =
            serde_json::to_string(&pool.template).map_err(|source| StoreError::BadSpec {
                name: pool.name.clone(),
                source,
            })?;
        let res = self.conn().execute(
            "INSERT INTO pools (name, template, size, ttl_secs, created_at, awake) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![pool.name, template, pool.size, pool.ttl_secs as i64, now(), pool.awake],
        );
        match res {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::Exists(format!("pool {}", pool.name)))
            }
            other => other.map(drop).map_err(StoreError::from),
        }
    }

    pub fn pools(&self) -> Result<Vec<PoolRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, template, size, ttl_secs, created_at, awake FROM pools ORDER BY name",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(name, template, size, ttl, created_at, awake)| {
                let template =
                    serde_json::from_str(&template).map_err(|source| StoreError::BadSpec {
                        name: name.clone(),
                        source,
                    })?;
                Ok(PoolRecord {
                    name,
                    template,
                    size: size.clamp(0, i64::from(u32::MAX)) as u32,
                    ttl_secs: ttl.max(0) as u64,
                    created_at,
                    awake: awake.map(|a| a.clamp(0, i64::from(u32::MAX)) as u32),
                })
            })
            .collect()
    }

    pub fn pool(&self, name: &str) -> Result<Option<PoolRecord>, StoreError> {
        Ok(self.pools()?.into_iter().find(|p| p.name == name))
    }

    pub fn resize_pool(&self, name: &str, size: u32) -> Result<bool, StoreError> {
        Ok(self.conn().execute(
            "UPDATE pools SET size = ?2 WHERE name = ?1",
            params![name, size],
        )? > 0)
    }

    pub fn delete_pool(&self, name: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM pools WHERE name = ?1", [name])?;
        Ok(())
    }

    pub fn insert_sandbox(&self, vm: &str, pool: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO sandboxes (vm, pool) VALUES (?1, ?2)",
            [vm, pool],
        )?;
        Ok(())
    }

    /// A sandbox of no pool's warm set: taken from the start, expiring
    /// `ttl_secs` from now (the keeper removes it then, as a taken one).
    pub fn insert_taken_sandbox(
        &self,
        vm: &str,
        label: &str,
        ttl_secs: u64,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO sandboxes (vm, pool, taken, expires_at) VALUES (?1, ?2, 1, ?3)",
            params![vm, label, now() + ttl_secs as i64],
        )?;
        Ok(())
    }

    pub fn sandboxes(&self) -> Result<Vec<SandboxRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT vm, pool, taken, expires_at FROM sandboxes ORDER BY vm")?;
        let rows = stmt
            .query_map([], |r| {
                Ok(SandboxRecord {
                    vm: r.get(0)?,
                    pool: r.get(1)?,
                    taken: r.get::<_, i64>(2)? != 0,
                    expires_at: r.get(3)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn sandbox(&self, vm: &str) -> Result<Option<SandboxRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT vm, pool, taken, expires_at FROM sandboxes WHERE vm = ?1",
                [vm],
                |r| {
                    Ok(SandboxRecord {
                        vm: r.get(0)?,
                        pool: r.get(1)?,
                        taken: r.get::<_, i64>(2)? != 0,
                        expires_at: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// Mark one warm sandbox of `pool` whose VM is running as taken, with
    /// its expiry; its VM name, or None when none is ready.
    /// Take a warm sandbox of `pool` in `state` (`running`, or `paused`
    /// for a sleeping one), the longest waiting first.
    pub fn take_sandbox(
        &self,
        pool: &str,
        ttl_secs: u64,
        state: &str,
    ) -> Result<Option<String>, StoreError> {
        let conn = self.conn();
        let vm: Option<String> = conn
            .query_row(
                "UPDATE sandboxes SET taken = 1, expires_at = ?2 \
                 WHERE vm = (SELECT s.vm FROM sandboxes s JOIN vms v ON v.name = s.vm \
                             WHERE s.pool = ?1 AND s.taken = 0 AND v.state = ?3 \
                             ORDER BY v.updated_at LIMIT 1) \
                 RETURNING vm",
                params![pool, now() + ttl_secs as i64, state],
                |r| r.get(0),
            )
            .optional()?;
        Ok(vm)
    }

    /// Set a taken sandbox's expiry to `secs` from now; false if no such
    /// taken sandbox.
    pub fn extend_sandbox(&self, vm: &str, secs: u64) -> Result<bool, StoreError> {
        Ok(self.conn().execute(
            "UPDATE sandboxes SET expires_at = ?2 WHERE vm = ?1 AND taken = 1",
            params![vm, now() + secs as i64],
        )? > 0)
    }

    pub fn delete_sandbox(&self, vm: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM sandboxes WHERE vm = ?1", [vm])?;
        Ok(())
    }
}
