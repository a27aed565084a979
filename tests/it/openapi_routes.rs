//! The OpenAPI document in the repository (served at /v1/openapi.json) describes exactly
//! the routes the worker's router serves, and its enums follow the registries.

use serde_json::Value;
use std::collections::BTreeSet;
use tracklayer::routes::ROUTES;

fn document() -> Value {
    let text = std::fs::read_to_string(format!("{}/openapi.json", env!("CARGO_MANIFEST_DIR")))
        .expect("openapi.json");
    serde_json::from_str(&text).expect("openapi.json is JSON")
}

fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            ops.insert((method.to_uppercase(), path.clone()));
        }
    }
    ops
}

#[test]
fn every_served_route_is_documented_and_nothing_else() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let documented = operations(&doc);
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.pattern.to_string()))
        .collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "served but not in openapi.json: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "in openapi.json but not served: {unserved:?}"
    );
}

#[test]
fn path_parameters_are_declared_and_enums_follow_the_registries() {
    let doc = document();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let names: Vec<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        for (method, op) in item.as_object().unwrap() {
            for name in &names {
                let declared = op["parameters"].as_array().is_some_and(|params| {
                    params
                        .iter()
                        .any(|p| p["in"] == "path" && p["name"] == *name && p["required"] == true)
                });
                assert!(
                    declared,
                    "{method} {path}: path parameter {name} undeclared"
                );
            }
            assert!(
                op["operationId"].is_string(),
                "{method} {path}: operationId"
            );
        }
    }
    let enum_of = |path: &str, method: &str, param: &str| -> BTreeSet<String> {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == param)
            .unwrap()["schema"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let sources: BTreeSet<String> = tracklayer::sources::REGISTRY
        .iter()
        .map(|s| s.name.to_string())
        .collect();
    assert_eq!(
        enum_of("/v1/integrations/{source}/events", "post", "source"),
        sources
    );
    let views: BTreeSet<String> = tracklayer::admin::VIEWS
        .iter()
        .map(|v| v.name.to_string())
        .collect();
    assert_eq!(
        enum_of("/v1/admin/merchants/{merchant_id}/{view}", "get", "view"),
        views
    );
    assert_eq!(
        enum_of("/v1/merchants/{merchant_id}/{view}", "get", "view"),
        views
    );
}
