//! The daemon's state: one SQLite file (WAL). Nothing lives only in memory:
//! a daemon restarted at any point finds every VM, its spec and its
//! processes here.

use rusqlite::{params, Connection, OptionalExtension};
pub use skiff_api::{Event, IllegalTransition, VmState};
use skiff_spec::VmSpec;
use skiff_vmm::ProcessRef;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

/// Schema migrations, applied in order; `PRAGMA user_version` records how
/// many ran. Never edit one that has shipped: add another.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE vms (
    name        TEXT PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    spec        TEXT NOT NULL,
    spec_hash   TEXT NOT NULL,
    state       TEXT NOT NULL,
    note        TEXT NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    qemu_pid    INTEGER,
    qemu_start  INTEGER,
    vsock_pid   INTEGER,
    vsock_start INTEGER,
    run_dir     TEXT,
    boots       INTEGER NOT NULL DEFAULT 0,
    restarts    INTEGER NOT NULL DEFAULT 0
);
"#,
    r#"
CREATE TABLE networks (
    name        TEXT PRIMARY KEY,
    subnet      TEXT NOT NULL,
    dns         TEXT,
    created_at  INTEGER NOT NULL
);
CREATE TABLE leases (
    network     TEXT NOT NULL REFERENCES networks(name),
    address     TEXT NOT NULL,
    vm          TEXT NOT NULL,
    PRIMARY KEY (network, address),
    UNIQUE (network, vm)
);
"#,
    r#"
CREATE TABLE pools (
    name        TEXT PRIMARY KEY,
    template    TEXT NOT NULL,
    size        INTEGER NOT NULL,
    ttl_secs    INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE sandboxes (
    vm          TEXT PRIMARY KEY,
    pool        TEXT NOT NULL,
    taken       INTEGER NOT NULL DEFAULT 0,
    expires_at  INTEGER
);
"#,
    // VMs of `skiff run`: they live as long as the client's connection.
    "ALTER TABLE vms ADD COLUMN ephemeral INTEGER NOT NULL DEFAULT 0;",
    // A VM's other helpers (virtiofsd and its workers), by pid and start
    // time, so that a later daemon can end them too.
    "CREATE TABLE helpers (vm TEXT NOT NULL, pid INTEGER NOT NULL, start INTEGER NOT NULL);",
    // VMs of `skiff run -d --rm`: removed when they end or are stopped.
    "ALTER TABLE vms ADD COLUMN remove_when_ended INTEGER NOT NULL DEFAULT 0;",
    // Pools of pausable sandboxes: how many ready ones stay running (the
    // rest sleep, paused); NULL: all.
    "ALTER TABLE pools ADD COLUMN awake INTEGER;",
    // Sandboxes made through the E2B-compatible API: whose (the hash of
    // the API key), and what E2B's clients asked for and read back.
    "CREATE TABLE e2b_sandboxes (vm TEXT PRIMARY KEY, owner TEXT NOT NULL, template TEXT NOT NULL, metadata TEXT NOT NULL, env_vars TEXT NOT NULL, started_at INTEGER NOT NULL, access_token TEXT NOT NULL);",
];

/// One VM as stored (the API shows it as `skiff_api::Vm`).
#[derive(Debug, Clone)]
pub struct VmRecord {
    pub name: String,
    pub id: String,
    pub spec: VmSpec,
    pub spec_hash: String,
    pub state: VmState,
    /// Why it is in that state, for humans ("service failed", ...).
    pub note: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub qemu: Option<ProcessRef>,
    pub vsock: Option<ProcessRef>,
    pub run_dir: Option<String>,
    pub boots: i64,
    pub restarts: i64,
    /// A `skiff run` VM: removed when its command ends, or when a new
    /// daemon finds it (its client went away with the old one).
    pub ephemeral: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state database {path}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state database error")]
    Sql(#[from] rusqlite::Error),
    #[error("a VM named {0:?} already exists")]
    Exists(String),
    #[error("no VM named {0:?}")]
    NotFound(String),
    #[error("VM {name:?}")]
    Illegal {
        name: String,
        #[source]
        source: IllegalTransition,
    },
    #[error("the stored spec of {name:?} cannot be read")]
    BadSpec {
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

pub struct Store {
    conn: Mutex<Connection>,
    /// Every change to a VM, for `GET /v1/events` (nobody listening: the
    /// events are dropped).
    events: tokio::sync::broadcast::Sender<skiff_api::VmEvent>,
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(open_err)?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
            conn.execute_batch(sql).map_err(open_err)?;
            conn.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(open_err)?;
        }
        Ok(Store {
            conn: Mutex::new(conn),
            events: tokio::sync::broadcast::channel(1024).0,
        })
    }

    /// The events from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<skiff_api::VmEvent> {
        self.events.subscribe()
    }

    fn emit(&self, vm: &str, action: &str, state: Option<VmState>, note: &str) {
        let _ = self.events.send(skiff_api::VmEvent {
            time: now(),
            vm: vm.to_owned(),
            action: action.to_owned(),
            state,
            note: note.to_owned(),
        });
    }

    /// A number that changes whenever a write changed a row: what was read
    /// at one generation is still true while it is the same.
    pub fn generation(&self) -> u64 {
        self.conn().total_changes()
    }

    pub(super) fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remove VM `name` when it ends or is stopped (`run -d --rm`).
    pub fn mark_remove_when_ended(&self, name: &str) -> Result<(), StoreError> {
        let n = self.conn().execute(
            "UPDATE vms SET remove_when_ended = 1 WHERE name = ?1",
            params![name],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(name.to_owned()));
        }
        Ok(())
    }

    /// Whether VM `name` goes when it ends (false for a VM that is gone).
    pub fn removes_when_ended(&self, name: &str) -> Result<bool, StoreError> {
        let found = self
            .conn()
            .query_row(
                "SELECT remove_when_ended FROM vms WHERE name = ?1",
                params![name],
                |r| r.get::<_, bool>(0),
            )
            .optional()?;
        Ok(found.unwrap_or(false))
    }

    pub fn insert(&self, id: &str, spec: &VmSpec, ephemeral: bool) -> Result<VmRecord, StoreError> {
        let json = serde_json::to_string(spec).map_err(|source| StoreError::BadSpec {
            name: spec.name.clone(),
            source,
        })?;
        let t = now();
        let res = self.conn().execute(
            "INSERT INTO vms (name, id, spec, spec_hash, state, created_at, updated_at, ephemeral) VALUES (?1, ?2, ?3, ?4, 'created', ?5, ?5, ?6)",
            params![spec.name, id, json, spec.content_hash(), t, ephemeral],
        );
        match res {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                return Err(StoreError::Exists(spec.name.clone()))
            }
            other => other?,
        };
        self.emit(&spec.name, "created", Some(VmState::Created), "");
        self.get(&spec.name)?
            .ok_or_else(|| StoreError::Exists(spec.name.clone()))
    }

    pub fn get(&self, name: &str) -> Result<Option<VmRecord>, StoreError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM vms WHERE name = ?1"),
                [name],
                row_to_raw,
            )
            .optional()?;
        drop(conn);
        row.map(raw_to_record).transpose()
    }

    pub fn list(&self) -> Result<Vec<VmRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM vms ORDER BY name"))?;
        let raws = stmt
            .query_map([], row_to_raw)?
            .collect::<Result<Vec<_>, _>>()?;
        drop(stmt);
        drop(conn);
        raws.into_iter().map(raw_to_record).collect()
    }

    /// Apply `event` to a VM's state: refused when the lifecycle does not
    /// allow it, and applied only if nobody changed the state meanwhile.
    pub fn transition(&self, name: &str, event: Event, note: &str) -> Result<VmState, StoreError> {
        let conn = self.conn();
        let current: Option<String> = conn
            .query_row("SELECT state FROM vms WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        let current =
            VmState::parse(&current.ok_or_else(|| StoreError::NotFound(name.to_owned()))?);
        let next = current.after(event).map_err(|source| StoreError::Illegal {
            name: name.to_owned(),
            source,
        })?;
        // The connection's mutex serialises this read and write against
        // every other use of the store.
        conn.execute(
            "UPDATE vms SET state = ?2, note = ?3, updated_at = ?4 WHERE name = ?1",
            params![name, next.as_str(), note, now()],
        )?;
        // Sent under the lock: events leave in the order of the writes.
        self.emit(name, event.name(), Some(next), note);
        drop(conn);
        Ok(next)
    }

    /// Say why a VM is in its state, without changing the state.
    pub fn set_note(&self, name: &str, note: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE vms SET note = ?2, updated_at = ?3 WHERE name = ?1",
            params![name, note, now()],
        )?;
        Ok(())
    }

    /// Record the processes of a VM that was just launched (and count the boot).
    pub fn set_processes(
        &self,
        name: &str,
        qemu: ProcessRef,
        vsock: ProcessRef,
        run_dir: &str,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE vms SET qemu_pid = ?2, qemu_start = ?3, vsock_pid = ?4, vsock_start = ?5, run_dir = ?6, boots = boots + 1, updated_at = ?7 WHERE name = ?1",
            params![name, qemu.pid, qemu.start_time as i64, vsock.pid, vsock.start_time as i64, run_dir, now()],
        )?;
        Ok(())
    }

    pub fn clear_processes(&self, name: &str) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.execute(
            "UPDATE vms SET qemu_pid = NULL, qemu_start = NULL, vsock_pid = NULL, vsock_start = NULL, run_dir = NULL WHERE name = ?1",
            [name],
        )?;
        conn.execute("DELETE FROM helpers WHERE vm = ?1", [name])?;
        Ok(())
    }

    /// Record more helper processes of a VM (kept until its processes are
    /// cleared).
    pub fn add_helpers(&self, name: &str, helpers: &[ProcessRef]) -> Result<(), StoreError> {
        let conn = self.conn();
        for h in helpers {
            conn.execute(
                "INSERT INTO helpers (vm, pid, start) VALUES (?1, ?2, ?3)",
                params![name, h.pid, h.start_time as i64],
            )?;
        }
        Ok(())
    }

    /// The recorded helper processes of a VM.
    pub fn helpers(&self, name: &str) -> Result<Vec<ProcessRef>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT pid, start FROM helpers WHERE vm = ?1")?;
        let rows = stmt.query_map([name], |r| {
            Ok(ProcessRef {
                pid: r.get(0)?,
                start_time: r.get::<_, i64>(1)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    pub fn count_restart(&self, name: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE vms SET restarts = restarts + 1 WHERE name = ?1",
            [name],
        )?;
        Ok(())
    }

    pub fn update_spec(&self, spec: &VmSpec) -> Result<(), StoreError> {
        let json = serde_json::to_string(spec).map_err(|source| StoreError::BadSpec {
            name: spec.name.clone(),
            source,
        })?;
        self.conn().execute(
            "UPDATE vms SET spec = ?2, spec_hash = ?3, updated_at = ?4 WHERE name = ?1",
            params![spec.name, json, spec.content_hash(), now()],
        )?;
        Ok(())
    }

    pub fn delete(&self, name: &str) -> Result<(), StoreError> {
        let conn = self.conn();
        let gone = conn.execute("DELETE FROM vms WHERE name = ?1", [name])?;
        conn.execute("DELETE FROM helpers WHERE vm = ?1", [name])?;
        if gone > 0 {
            self.emit(name, "removed", None, "");
        }
        drop(conn);
        Ok(())
    }
}

const COLUMNS: &str = "name, id, spec, spec_hash, state, note, created_at, updated_at, qemu_pid, qemu_start, vsock_pid, vsock_start, run_dir, boots, restarts, ephemeral";

type Raw = (
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<i32>,
    Option<i64>,
    Option<i32>,
    Option<i64>,
    Option<String>,
    i64,
    i64,
    bool,
);

fn row_to_raw(r: &rusqlite::Row<'_>) -> rusqlite::Result<Raw> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
        r.get(12)?,
        r.get(13)?,
        r.get(14)?,
        r.get(15)?,
    ))
}

fn raw_to_record(raw: Raw) -> Result<VmRecord, StoreError> {
    let (
        name,
        id,
        spec,
        spec_hash,
        state,
        note,
        created_at,
        updated_at,
        qp,
        qs,
        vp,
        vs,
        run_dir,
        boots,
        restarts,
        ephemeral,
    ) = raw;
    let spec: VmSpec = serde_json::from_str(&spec).map_err(|source| StoreError::BadSpec {
        name: name.clone(),
        source,
    })?;
    let proc_ref = |pid: Option<i32>, start: Option<i64>| match (pid, start) {
        (Some(pid), Some(start)) => Some(ProcessRef {
            pid,
            start_time: start as u64,
        }),
        _ => None,
    };
    Ok(VmRecord {
        name,
        id,
        spec,
        spec_hash,
        state: VmState::parse(&state),
        note,
        created_at,
        updated_at,
        qemu: proc_ref(qp, qs),
        vsock: proc_ref(vp, vs),
        run_dir,
        boots,
        restarts,
        ephemeral,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_processes_are_kept_until_the_vms_processes_are_cleared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("state.db");
        let store = Store::open(&db).expect("open");
        store
            .insert("id1", &VmSpec::with_defaults("web"), false)
            .expect("insert");
        let h = |pid, start_time| ProcessRef { pid, start_time };
        store
            .add_helpers("web", &[h(20, 7), h(21, 8)])
            .expect("add");
        store.add_helpers("web", &[h(22, 9)]).expect("add more");
        drop(store);
        let store = Store::open(&db).expect("reopen");
        assert_eq!(
            store.helpers("web").expect("helpers"),
            [h(20, 7), h(21, 8), h(22, 9)]
        );
        store.clear_processes("web").expect("clear");
        assert!(store.helpers("web").expect("helpers").is_empty());
        store.add_helpers("web", &[h(30, 1)]).expect("add");
        store.delete("web").expect("delete");
        assert!(store.helpers("web").expect("helpers").is_empty());
    }

    #[test]
    fn vms_survive_reopening_the_file_with_their_state_and_processes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("state.db");
        let spec = VmSpec::with_defaults("web");
        {
            let store = Store::open(&db).expect("open");
            store.insert("abc123", &spec, false).expect("insert");
            let q = ProcessRef {
                pid: 10,
                start_time: 99,
            };
            let v = ProcessRef {
                pid: 11,
                start_time: 100,
            };
            store.set_processes("web", q, v, "/run/x").expect("procs");
            store.transition("web", Event::Start, "").expect("start");
            store.transition("web", Event::Booted, "").expect("booted");
        }
        let store = Store::open(&db).expect("reopen");
        let rec = store.get("web").expect("get").expect("exists");
        assert_eq!(rec.state, VmState::Running);
        assert_eq!(
            rec.qemu,
            Some(ProcessRef {
                pid: 10,
                start_time: 99
            })
        );
        assert_eq!(rec.spec, spec);
        assert_eq!(rec.boots, 1);
        assert!(!rec.ephemeral);
    }

    #[test]
    fn removal_when_ended_is_kept_per_vm_and_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("s.db");
        {
            let store = Store::open(&db).expect("open");
            for (id, name) in [("i1", "once"), ("i2", "kept")] {
                store
                    .insert(id, &VmSpec::with_defaults(name), false)
                    .expect("insert");
            }
            store.mark_remove_when_ended("once").expect("mark");
            assert!(matches!(
                store.mark_remove_when_ended("gone"),
                Err(StoreError::NotFound(_))
            ));
        }
        let store = Store::open(&db).expect("reopen");
        assert!(store.removes_when_ended("once").expect("query"));
        assert!(!store.removes_when_ended("kept").expect("query"));
        assert!(!store.removes_when_ended("gone").expect("query"));
    }

    #[test]
    fn the_store_refuses_an_illegal_transition_and_keeps_the_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("s.db")).expect("open");
        store
            .insert("id1", &VmSpec::with_defaults("a"), true)
            .expect("insert");
        let err = store
            .transition("a", Event::Halted, "")
            .expect_err("illegal");
        assert!(matches!(err, StoreError::Illegal { .. }), "{err:?}");
        let rec = store.get("a").expect("get").expect("exists");
        assert_eq!(rec.state, VmState::Created);
        assert!(rec.ephemeral);
        assert!(matches!(
            store.transition("nope", Event::Start, ""),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn a_duplicate_name_is_refused_and_delete_removes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("s.db")).expect("open");
        let spec = VmSpec::with_defaults("a");
        store.insert("id1", &spec, false).expect("insert");
        assert!(
            matches!(store.insert("id2", &spec, false), Err(StoreError::Exists(n)) if n == "a")
        );
        assert_eq!(store.list().expect("list").len(), 1);
        store.delete("a").expect("delete");
        assert!(store.get("a").expect("get").is_none());
    }
}
