//! The OpenAPI document the relay serves (`/openapi.json`, issue 16) is kept in step with the
//! code: every documented operation exists, every real answer of a handshake matches its schema's
//! fields, and its error codes are exactly the ones docs/protocol.md's table lists. (The
//! property-based run against the whole document is `scripts/api-fuzz.sh`, schemathesis.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::collections::BTreeSet;

use common::{relay_command, ServerProcess};
use mtproto_crypto::rand_core::OsRng;
use mtproto_session::{ClientHandshake, ClientId, ServerPin};
use serde_json::Value;

/// `value`'s fields are the schema's: none unknown, none required missing.
fn matches(doc: &Value, schema: &str, value: &Value) {
    let s = &doc["components"]["schemas"][schema];
    let props: BTreeSet<&str> = s["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let keys: BTreeSet<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
    assert!(keys.is_subset(&props), "{schema}: {keys:?} not all in {props:?}");
    for r in s["required"].as_array().unwrap() {
        assert!(
            keys.contains(r.as_str().unwrap()),
            "{schema}: {r} missing from {value}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_document_matches_the_routes_the_answers_and_the_error_table() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(relay_command(dir.path(), "127.0.0.1:0", 1));
    let http = reqwest::Client::new();
    let doc: Value = http
        .get(format!("{}/openapi.json", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");

    // Every documented operation is routed (a POST with an empty object is refused, not 404).
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let req = match method.as_str() {
                "post" => http
                    .post(format!("{}{path}", server.url))
                    .json(&serde_json::json!({})),
                "get" => http.get(format!("{}{path}", server.url)),
                "head" => http.head(format!("{}{path}", server.url)),
                other => panic!("{other}"),
            };
            let status = req.send().await.unwrap().status().as_u16();
            assert_ne!(status, 404, "{method} {path}");
            assert!(
                ops[method]["responses"].get(status.to_string()).is_some(),
                "{method} {path}: {status} undocumented"
            );
        }
    }

    // A real handshake's answers have exactly the documented fields.
    let key = common::fetch_server_key(&server.url).await;
    let (c, req) = ClientHandshake::start(ServerPin::Key(key), ClientId::new("alice").unwrap(), &mut OsRng);
    matches(&doc, "ReqPq", &serde_json::to_value(&req).unwrap());
    let post = |path: &'static str, body: Value| {
        let http = http.clone();
        let url = format!("{}{path}", server.url);
        async move {
            http.post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let res = post("/req_pq", serde_json::to_value(&req).unwrap()).await;
    matches(&doc, "ResPq", &res);
    let (c, req) = c.handle_res_pq(&serde_json::from_value(res).unwrap()).unwrap();
    matches(&doc, "ReqDhParams", &serde_json::to_value(&req).unwrap());
    let res = post("/req_dh_params", serde_json::to_value(&req).unwrap()).await;
    matches(&doc, "ServerDhParams", &res);
    let (c, req) = c
        .handle_server_dh_params(&serde_json::from_value(res).unwrap(), common::now(), &mut OsRng)
        .unwrap();
    matches(&doc, "SetClientDhParams", &serde_json::to_value(&req).unwrap());
    let res = post("/set_client_dh_params", serde_json::to_value(&req).unwrap()).await;
    matches(&doc, "DhGenOk", &res);
    assert!(res.get("auth_key").is_none(), "the auth key must never be sent");
    c.handle_dh_gen_ok(&serde_json::from_value(res).unwrap()).unwrap();
    let refused = post("/req_pq", serde_json::json!({"nonce": "short"})).await;
    matches(&doc, "Error", &refused);

    // The error codes: the document's enum is docs/protocol.md's table.
    let documented: BTreeSet<String> = doc["components"]["schemas"]["Error"]["properties"]["error"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let protocol =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/protocol.md")).unwrap();
    let start = protocol.find("| code | status").expect("the error table");
    let mut table = BTreeSet::new();
    for line in protocol[start..].lines().skip(2) {
        if !line.starts_with('|') {
            break;
        }
        let mut cells = line.split('|').skip(1);
        let (first, status) = (cells.next().unwrap(), cells.next().unwrap());
        for part in first.split('`').skip(1).step_by(2) {
            // The table's status is the one relay-api gives the code.
            let code: relay_api::ErrorCode = serde_json::from_value(serde_json::json!(part)).unwrap();
            assert!(
                status.trim().starts_with(&code.http_status().to_string()),
                "{part}: the table says {status}, relay-api {}",
                code.http_status()
            );
            table.insert(part.to_owned());
        }
    }
    assert_eq!(documented, table);
    // …and relay-api's list of every code the relay answers.
    let typed: BTreeSet<String> = relay_api::ErrorCode::ALL
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    assert_eq!(documented, typed);
}
