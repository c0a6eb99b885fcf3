//! docs/openapi.json cannot drift from the API types: its components are
//! exactly the schemas `skiff_api::schema::components()` generates from the
//! types (`SKIFF_BLESS_OPENAPI=1 cargo test -p skiff-daemon openapi`
//! rewrites them), and every request body and answer in its paths refers
//! to one of them.
use serde_json::Value;

fn doc_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

fn read_doc() -> Value {
    let text = std::fs::read_to_string(doc_path()).expect("docs/openapi.json");
    serde_json::from_str(&text).expect("openapi.json parses")
}

#[test]
fn the_document_holds_the_schemas_generated_from_the_types() {
    let generated = Value::Object(skiff_api::schema::components());
    if std::env::var_os("SKIFF_BLESS_OPENAPI").is_some() {
        let mut doc = read_doc();
        doc["components"]["schemas"] = generated.clone();
        let text = serde_json::to_string_pretty(&doc).expect("json") + "\n";
        std::fs::write(doc_path(), text).expect("write docs/openapi.json");
    }
    let doc = read_doc();
    assert!(
        doc["components"]["schemas"] == generated,
        "docs/openapi.json's schemas are not the types' (run SKIFF_BLESS_OPENAPI=1 cargo test -p skiff-daemon openapi and commit)"
    );
    // What the daemon serves is that file.
    let served: Value = serde_json::from_str(super::OPENAPI).expect("served document");
    assert_eq!(served["components"], doc["components"]);
}

/// Every `$ref` in `v`.
fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get("$ref") {
                out.push(r);
            }
            o.values().for_each(|x| refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[test]
fn request_bodies_are_components_and_every_reference_resolves() {
    let doc = read_doc();
    let schemas = &doc["components"]["schemas"];
    let paths = doc["paths"].as_object().expect("paths");
    for (path, ops) in paths {
        for (method, op) in ops.as_object().into_iter().flatten() {
            let body = &op["requestBody"]["content"]["application/json"]["schema"];
            if body.is_object() {
                assert!(
                    body["$ref"].is_string(),
                    "{method} {path}: its request body must be a component, not inline"
                );
            }
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 20, "{all:?}");
    for r in all {
        let name = r.strip_prefix("#/components/schemas/").expect(r);
        assert!(schemas[name].is_object(), "{r} does not resolve");
    }
}
