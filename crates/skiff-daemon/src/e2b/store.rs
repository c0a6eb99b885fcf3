//! The E2B sandboxes in the state database: which API key made each (by
//! its hash, never the key), with what E2B's clients asked for.

use crate::store::{Store, StoreError};
use rusqlite::{params, OptionalExtension};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct E2bSandbox {
    /// The skiff VM, which is also the sandbox's E2B id.
    pub vm: String,
    /// Hash of the API key that made it: only that key sees it.
    pub owner: String,
    pub template: String,
    pub metadata: BTreeMap<String, String>,
    /// Environment every process of the sandbox gets.
    pub env_vars: BTreeMap<String, String>,
    /// Unix seconds.
    pub started_at: i64,
    /// What envd calls must carry as `X-Access-Token`.
    pub access_token: String,
}

fn map_text(m: &BTreeMap<String, String>) -> String {
    serde_json::to_string(m).unwrap_or_else(|_| "{}".into())
}

fn text_map(t: &str) -> BTreeMap<String, String> {
    serde_json::from_str(t).unwrap_or_default()
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<E2bSandbox> {
    Ok(E2bSandbox {
        vm: r.get(0)?,
        owner: r.get(1)?,
        template: r.get(2)?,
        metadata: text_map(&r.get::<_, String>(3)?),
        env_vars: text_map(&r.get::<_, String>(4)?),
        started_at: r.get(5)?,
        access_token: r.get(6)?,
    })
}

const COLUMNS: &str = "vm, owner, template, metadata, env_vars, started_at, access_token";

impl Store {
    pub fn insert_e2b(&self, s: &E2bSandbox) -> Result<(), StoreError> {
        self.conn().execute(
            &format!("INSERT INTO e2b_sandboxes ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
            params![
                s.vm,
                s.owner,
                s.template,
                map_text(&s.metadata),
                map_text(&s.env_vars),
                s.started_at,
                s.access_token
            ],
        )?;
        Ok(())
    }

    pub fn e2b(&self, vm: &str) -> Result<Option<E2bSandbox>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM e2b_sandboxes WHERE vm = ?1"),
                [vm],
                row,
            )
            .optional()?)
    }

    /// The sandboxes of one key, the newest first.
    pub fn e2b_of(&self, owner: &str) -> Result<Vec<E2bSandbox>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM e2b_sandboxes WHERE owner = ?1 ORDER BY started_at DESC, vm"
        ))?;
        let rows = stmt
            .query_map([owner], row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn delete_e2b(&self, vm: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM e2b_sandboxes WHERE vm = ?1", [vm])?;
        Ok(())
    }
}
