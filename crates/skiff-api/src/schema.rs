//! The OpenAPI components of the API, generated from the types in this
//! crate: docs/openapi.json holds exactly these (a daemon test compares
//! them and, with `SKIFF_BLESS_OPENAPI=1`, writes them), so the document
//! cannot drift from the code.

use crate::*;
use schemars::gen::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value};

/// The daemon's version, as `GET /v1/version` answers.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Version {
    pub version: String,
    pub api: String,
}

/// Every schema the API uses, by name, as OpenAPI 3.0 components (the
/// spec's types included, as the `Vm` and `Pool` answers carry them).
pub fn components() -> Map<String, Value> {
    let mut gen: SchemaGenerator = SchemaSettings::openapi3().into_generator();
    macro_rules! add {
        ($($t:ty),* $(,)?) => { $( gen.subschema_for::<$t>(); )* };
    }
    add!(
        // requests
        SpecText,
        StopQuery,
        CreateQuery,
        RemoveQuery,
        LogsQuery,
        ExecBody,
        CommandBody,
        WaitQuery,
        CopyBody,
        FileQuery,
        MakeDirBody,
        RenameBody,
        CreateVolume,
        CreateNetwork,
        CreatePool,
        ResizeBody,
        TakeBody,
        TtlBody,
        CreateSnapshot,
        StartSnapshot,
        RunBody,
        EventsQuery,
        // responses
        ErrorBody,
        Version,
        Vm,
        ApplyChange,
        VolumeInfo,
        PruneReport,
        CommandState,
        Network,
        Pool,
        Sandbox,
        Snapshot,
        VmEvent,
        VmStats,
        FileEntry,
    );
    gen.take_definitions()
        .into_iter()
        .map(|(name, schema)| {
            let value = serde_json::to_value(schema).unwrap_or(Value::Null);
            (name, value)
        })
        .collect()
}
