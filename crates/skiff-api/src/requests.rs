//! Request bodies and query strings, each `deny_unknown_fields`: a
//! misspelt field is an error that names it, never silently ignored.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `POST /v1/vms`, `POST /v1/apply`: a spec file's text.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpecText {
    pub spec: String,
}

/// `POST /v1/vms/{name}/stop?timeout=SECS`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StopQuery {
    pub timeout: Option<u64>,
}

/// `POST /v1/vms?remove_when_ended=true`: the VMs are removed when they
/// end or are stopped (`skiff run -d --rm`, as docker's `--rm`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateQuery {
    #[serde(default)]
    pub remove_when_ended: bool,
}

/// `DELETE /v1/vms/{name}?force=&volumes=`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub volumes: bool,
}

/// `GET /v1/events?vm=&action=`: only the events of that VM, or of that
/// action.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    #[serde(default)]
    pub vm: Option<String>,
    #[serde(default)]
    pub action: Option<String>,
}

/// `GET /v1/vms/{name}/logs?follow=&tail=`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    #[serde(default)]
    pub follow: bool,
    /// Start this many lines before the end (default: the whole log).
    #[serde(default)]
    pub tail: Option<u64>,
    /// Begin each line with the time the daemon first saw it (RFC 3339,
    /// UTC, milliseconds), within a quarter of a second.
    #[serde(default)]
    pub timestamps: bool,
    /// Only lines seen at or after this time (Unix seconds).
    #[serde(default)]
    pub since: Option<u64>,
}

/// A terminal's size, for commands on a pseudo-terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

/// `POST /v1/vms/{name}/exec` (upgraded to frames): a command whose
/// streams travel as frames both ways.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    #[schemars(length(min = 1))]
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub stdin: bool,
    /// Run on a pseudo-terminal of this size.
    #[serde(default)]
    pub tty: Option<TtySize>,
    /// Run as this guest user (name, UID or UID:GID); default root.
    #[serde(default)]
    pub user: Option<String>,
}

/// `POST /v1/vms/{name}/commands`: a command answered with NDJSON events,
/// or with a handle when `background`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandBody {
    #[schemars(length(min = 1))]
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub workdir: Option<String>,
    /// Bytes for stdin, base64; none: stdin is empty.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Kill the command (and its process group) after this many seconds.
    #[serde(default)]
    pub timeout_secs: Option<f64>,
    /// Answer at once with a handle (`{"id": ...}`) instead of streaming:
    /// see `GET /v1/vms/{name}/commands/{id}`.
    #[serde(default)]
    pub background: bool,
    /// Run as this guest user (name, UID or UID:GID); default root.
    #[serde(default)]
    pub user: Option<String>,
}

/// `GET /v1/vms/{name}/commands/{id}?wait=SECS`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct WaitQuery {
    #[serde(default)]
    pub wait: Option<f64>,
}

/// `POST /v1/vms/{name}/copy-in`, `copy-out` (upgraded to frames).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CopyBody {
    /// Absolute path in the guest.
    pub path: String,
}

/// `?path=P[&user=U][&depth=N]` of `/v1/vms/{name}/files`, `…/files/info`
/// and `…/files/list`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileQuery {
    /// A guest path; a relative one is under the user's home.
    pub path: String,
    /// Act as this guest user (name or UID); default root.
    #[serde(default)]
    pub user: Option<String>,
    /// For a listing: how many levels down (default 1, at most 64).
    #[serde(default)]
    pub depth: Option<u32>,
}

/// `POST /v1/vms/{name}/files/mkdir`: a directory and its missing parents.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MakeDirBody {
    pub path: String,
    #[serde(default)]
    pub user: Option<String>,
}

/// `POST /v1/vms/{name}/files/rename`: `from` moved to `to` (whose missing
/// parents are made).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameBody {
    pub from: String,
    pub to: String,
    #[serde(default)]
    pub user: Option<String>,
}

/// `POST /v1/volumes`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolume {
    pub name: String,
    /// A size with a unit ("1G"); default 1 GiB.
    #[serde(default)]
    pub size: Option<String>,
}

/// `POST /v1/networks`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNetwork {
    pub name: String,
    pub subnet: String,
    #[serde(default)]
    pub dns: Option<String>,
}

/// `POST /v1/pools`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePool {
    pub name: String,
    #[serde(default = "one")]
    pub size: u32,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub cpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u32>,
    #[serde(default)]
    pub net: Option<String>,
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// Sandboxes can be paused and resumed (`pausable` in a spec); not
    /// with an image, whose root is a shared directory.
    #[serde(default)]
    pub pausable: bool,
    /// Of a pausable pool's ready sandboxes, keep this many running and
    /// the rest asleep (paused: their memory is the host's); a take wakes
    /// one when none runs. None: all run.
    #[serde(default)]
    pub awake: Option<u32>,
    /// A taken sandbox of a pausable pool that nobody used for this many
    /// seconds is paused, and its next use wakes it (`sleep_after` in a
    /// spec). None: it runs until its end.
    #[serde(default)]
    pub sleep_after_secs: Option<u64>,
}

fn one() -> u32 {
    1
}

/// `POST /v1/pools/{name}/resize`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeBody {
    pub size: u32,
}

/// `POST /v1/pools/{name}/take`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TakeBody {
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    #[serde(default)]
    pub wait_secs: Option<u64>,
}

/// `POST /v1/vms/{name}/ttl`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TtlBody {
    pub seconds: u64,
}

/// `POST /v1/vms/{name}/snapshot`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    /// The snapshot's name (a-z, 0-9 and -, as VM names).
    pub tag: String,
}

/// `POST /v1/snapshots/{tag}/start`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartSnapshot {
    /// The new VM's name (default: TAG-XXXXXX).
    #[serde(default)]
    pub name: Option<String>,
}
