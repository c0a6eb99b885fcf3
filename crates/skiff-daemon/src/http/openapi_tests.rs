//! docs/openapi.json cannot drift from the API types: for every request
//! body and the main responses, the document's properties are exactly the
//! type's fields (a full sample of each type is serialized; a new field is
//! a compile error here until the sample, and then the document, has it),
//! and a body holding only the document's required fields is accepted.
use super::OPENAPI;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};
use skiff_api::*;
use std::collections::BTreeSet;

fn doc() -> Value {
    serde_json::from_str(OPENAPI).expect("openapi.json parses")
}

/// The schema of a request body, or of a component, with `$ref` resolved.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.rsplit('/').next().expect("ref name");
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

fn request_schema<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
    let s = &doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"];
    assert!(
        s.is_object(),
        "{method} {path} has no JSON request body in the document"
    );
    resolve(doc, s)
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// The document's properties are the sample's fields, and the required
/// ones alone make a valid body.
fn check<T: Serialize + DeserializeOwned>(what: &str, schema: &Value, full: &T) {
    let sample = serde_json::to_value(full).expect("serialize");
    assert_eq!(
        keys(&schema["properties"]),
        keys(&sample),
        "{what}: docs/openapi.json and the type disagree on the fields"
    );
    let required: Map<String, Value> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|k| (k.to_owned(), sample[k].clone()))
        .collect();
    if let Err(e) = serde_json::from_value::<T>(Value::Object(required)) {
        panic!("{what}: a body with only the documented required fields is refused: {e}");
    }
}

#[test]
fn request_bodies_match_the_api_types() {
    let d = doc();
    let req = |m, p| request_schema(&d, m, p);
    check(
        "SpecText",
        req("post", "/v1/vms"),
        &SpecText { spec: "x".into() },
    );
    check(
        "ExecBody",
        req("post", "/v1/vms/{name}/exec"),
        &ExecBody {
            argv: vec!["true".into()],
            env: vec![("A".into(), "1".into())],
            workdir: Some("/".into()),
            stdin: true,
            tty: Some(TtySize { rows: 24, cols: 80 }),
            user: Some("root".into()),
        },
    );
    check(
        "RunBody",
        req("post", "/v1/run"),
        &RunBody {
            argv: vec!["true".into()],
            cpus: 1,
            memory_mib: 256,
            env: vec![],
            workdir: Some("/".into()),
            accel: skiff_spec::Accel::Auto,
            kernel: Some("/k".into()),
            modules: Some("/m".into()),
            boot_timeout_secs: 120,
            quiet: true,
            stdin: false,
            net: Some("user".into()),
            publish: vec![],
            shares: vec![RunShare {
                source: "/s".into(),
                target: "/t".into(),
                readonly: true,
            }],
            rootfs: Some(RunRootFs {
                source: "/r".into(),
                writable: false,
            }),
        },
    );
    check(
        "CopyBody",
        req("post", "/v1/vms/{name}/copy-in"),
        &CopyBody { path: "/x".into() },
    );
    check(
        "CreateVolume",
        req("post", "/v1/volumes"),
        &CreateVolume {
            name: "v".into(),
            size: Some("1G".into()),
        },
    );
    check(
        "CreateNetwork",
        req("post", "/v1/networks"),
        &CreateNetwork {
            name: "lan".into(),
            subnet: "10.88.0.0/24".into(),
            dns: Some("10.88.0.1".into()),
        },
    );
    check(
        "CreatePool",
        req("post", "/v1/pools"),
        &CreatePool {
            name: "p".into(),
            size: 2,
            image: Some("python".into()),
            cpus: Some(1),
            memory_mib: Some(256),
            net: Some("user".into()),
            ttl_secs: Some(60),
        },
    );
    check(
        "ResizeBody",
        req("post", "/v1/pools/{name}/resize"),
        &ResizeBody { size: 3 },
    );
    check(
        "TakeBody",
        req("post", "/v1/pools/{name}/take"),
        &TakeBody {
            ttl_secs: Some(60),
            wait_secs: Some(10),
        },
    );
    check(
        "TtlBody",
        req("post", "/v1/vms/{name}/ttl"),
        &TtlBody { seconds: 60 },
    );
    check(
        "CommandBody",
        req("post", "/v1/vms/{name}/commands"),
        &CommandBody {
            argv: vec!["true".into()],
            env: vec![],
            workdir: Some("/".into()),
            stdin: Some("aGk=".into()),
            timeout_secs: Some(1.5),
            background: true,
            user: Some("root".into()),
        },
    );
}

#[test]
fn responses_match_the_api_types() {
    let d = doc();
    let component = |name: &str| d["components"]["schemas"][name].clone();
    let process = Some(ProcessInfo {
        pid: 1,
        start_time: 2,
    });
    check(
        "Vm",
        &component("Vm"),
        &Vm {
            name: "web".into(),
            id: "abc".into(),
            spec: skiff_spec::VmSpec::with_defaults("web"),
            spec_hash: "h".into(),
            state: VmState::Running,
            note: String::new(),
            created_at: 1,
            updated_at: 2,
            qemu: process,
            vsock: process,
            run_dir: Some("/run/x".into()),
            boots: 1,
            restarts: 0,
            ephemeral: false,
        },
    );
    check(
        "ApplyChange",
        &component("ApplyChange"),
        &ApplyChange {
            name: "web".into(),
            action: "created".into(),
            changed: vec![],
        },
    );
    check(
        "Volume",
        &component("Volume"),
        &VolumeInfo {
            name: "v".into(),
            size_mib: 1,
            used_by: vec![],
        },
    );
    check(
        "Error",
        &component("Error"),
        &ErrorBody { error: "x".into() },
    );
    check(
        "Network",
        &component("Network"),
        &Network {
            name: "lan".into(),
            subnet: "10.88.0.0/24".into(),
            gateway: "10.88.0.1".parse().expect("ip"),
            bridge: "skb-lan".into(),
            dns: Some("10.88.0.1".parse().expect("ip")),
            created_at: 1,
            leases: vec![],
        },
    );
    let lease = serde_json::to_value(Lease {
        network: "lan".into(),
        address: "10.88.0.2".parse().expect("ip"),
        vm: "web".into(),
    })
    .expect("lease");
    assert_eq!(
        keys(&component("Network")["properties"]["leases"]["items"]["properties"]),
        keys(&lease),
        "Lease"
    );
    check(
        "Pool",
        &component("Pool"),
        &Pool {
            name: "p".into(),
            template: skiff_spec::VmSpec::with_defaults("p"),
            size: 2,
            ttl_secs: 60,
            created_at: 1,
            ready: 1,
            booting: 1,
            taken: 0,
        },
    );
    check(
        "Sandbox",
        &component("Sandbox"),
        &Sandbox {
            vm: "p-abc".into(),
            pool: "p".into(),
            taken: true,
            expires_at: Some(5),
            address: Some("10.88.0.3".into()),
        },
    );
    // The states the document lists are the lifecycle's.
    let states: Vec<String> = component("Vm")["properties"]["state"]["enum"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        states,
        VmState::ALL
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect::<Vec<_>>()
    );
    assert_eq!(json!(VmState::Exited), json!("exited"));
}
