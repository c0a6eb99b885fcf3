//! The daemon's HTTP/JSON API as types: every request body and query, the
//! plain responses, the VM lifecycle, and the protocol constants. The
//! daemon deserializes these, the CLI serializes them (and reads the
//! responses back typed), and docs/openapi.json describes them; no I/O
//! here.

pub mod lifecycle;
mod requests;
mod responses;
mod run;
pub mod schema;

pub use lifecycle::{Event, IllegalTransition, VmEvent, VmState};
pub use requests::*;
pub use responses::*;
pub use run::{RunBody, RunRootFs, RunShare};
pub use schema::Version;

/// The API's version, the first segment of every path.
pub const API_VERSION: &str = "v1";
/// The header carrying the daemon's version in every response.
pub const VERSION_HEADER: &str = "x-skiff-version";
/// The header carrying the daemon's API version in every response: a
/// client works with a daemon of the same API version, whatever their
/// package versions.
pub const API_HEADER: &str = "x-skiff-api";
/// The `Upgrade:` token of connections that switch to skiff-proto frames
/// (exec, run, copy).
pub const EXEC_UPGRADE: &str = "skiff-exec";
