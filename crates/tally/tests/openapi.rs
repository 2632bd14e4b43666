//! The OpenAPI document as a client meets it: served without a key, a
//! valid OpenAPI 3.1 document (checked by the reference validator,
//! openapi-spec-validator), and complete: every operation has an id, a
//! tag, a success answer and the refusals, and every schema it names
//! exists. (That every answer in the tests matches its schema is checked
//! by the server itself: the tests run it with TALLY_CHECK_RESPONSES=1.)

mod common;

use std::process::Command;

use serde_json::Value;

#[tokio::test]
async fn the_document_is_served_valid_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = common::Server::start(&data);
    let resp = common::client()
        .get(format!("{}/v1/openapi.json", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "Tally");

    let path = dir.path().join("openapi.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let python = std::env::var("TALLY_TEST_PYTHON").expect(
        "TALLY_TEST_PYTHON is not set: run scripts/test, which provides a Python with openapi-spec-validator",
    );
    let out = Command::new(&python)
        .args(["-m", "openapi_spec_validator"])
        .arg(&path)
        .output()
        .expect("the test Python runs");
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let text = doc.to_string();
    for r in text.split("\"#/components/schemas/").skip(1) {
        let name = &r[..r.find('"').unwrap()];
        assert!(
            schemas.contains_key(name),
            "{name} is referenced, not defined"
        );
    }
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let what = format!("{method} {path}");
            assert!(op["operationId"].is_string(), "{what} has no operationId");
            assert_eq!(op["tags"].as_array().map(Vec::len), Some(1), "{what}");
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{what} declares no success"
            );
            if !path.starts_with("/v1/openapi") && path != "/healthz" && path != "/metrics" {
                for refusal in ["400", "401", "403", "404", "500"] {
                    assert!(responses.contains_key(refusal), "{what} lacks {refusal}");
                }
            }
        }
    }
    // Every operation the router serves under /v1 plus /healthz and
    // /metrics. (A route missing from the document is caught by the
    // servers of the other tests: an answer no operation declares is a 500
    // there.)
    assert_eq!(operations, 47, "operations in the document");
    // Money is never a JSON number: every schema named for an amount is a
    // string.
    let line = &schemas["RatedLine"]["properties"];
    for field in ["amount", "quantity"] {
        assert_eq!(line[field]["type"], "string", "RatedLine.{field}: {line}");
    }
}
