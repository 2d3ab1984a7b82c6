//! The HTTP API against a real node: a real `mpc_core::Node` driven by
//! `mpc_core::drive`, a real SQLite database, the real axum router on a
//! loopback port and a real HTTP client. Submissions are judged by the
//! core; reads come back from the database; every error is the JSON shape
//! with its stable code; and after every bad request the node still serves
//! a good one.

mod api_harness;

use api_harness::*;
use base64::Engine;
use ed25519_dalek::Verifier;
use mpc_core::vote::{Decision, VoteBody};
use mpc_core::{NodeId, Record, TxId};
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeSet;

fn client() -> Client {
    Client::builder().timeout(std::time::Duration::from_secs(60)).build().expect("an HTTP client")
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn authed(r: RequestBuilder) -> RequestBuilder {
    r.bearer_auth(ALICE_TOKEN)
}

/// The response's JSON body, checking its status and content type.
fn json_of(resp: Response, status: StatusCode) -> Value {
    let got = resp.status();
    let content_type = resp.headers().get("content-type").map(|v| v.to_str().unwrap_or("").to_string());
    let text = resp.text().expect("a body");
    assert_eq!(got, status, "body: {text}");
    assert!(
        content_type.as_deref().is_some_and(|c| c.starts_with("application/json")),
        "{got}: content type {content_type:?}, body {text}"
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The error's code (and `problem`), checking it is our JSON error shape.
fn error_of(resp: Response, status: StatusCode) -> (String, Option<String>, Value) {
    let body = json_of(resp, status);
    let error = &body["error"];
    let code = error["code"].as_str().unwrap_or_else(|| panic!("no error code in {body}")).to_string();
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "no message in {body}");
    assert!(code.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "code {code:?} is not snake_case");
    (code, error["problem"].as_str().map(str::to_string), body)
}

fn submit_json(c: &Client, node: &TestNode, psbt: &[u8]) -> Response {
    authed(c.post(node.url("/api/v1/transactions"))).json(&json!({ "psbt": b64(psbt) })).send().expect("sent")
}

fn submit_binary(c: &Client, node: &TestNode, psbt: &[u8]) -> Response {
    authed(c.post(node.url("/api/v1/transactions")))
        .header("content-type", "application/octet-stream")
        .body(psbt.to_vec())
        .send()
        .expect("sent")
}

/// A good submission still goes through: the node is alive and well.
fn still_serves(c: &Client, node: &TestNode, salt: u8) -> String {
    let body = json_of(submit_json(c, node, &good_psbt(salt)), StatusCode::ACCEPTED);
    body["tx_id"].as_str().expect("a tx id").to_string()
}

#[test]
fn a_valid_psbt_is_accepted_and_read_back_from_the_database() {
    let node = TestNode::start(Options::keyed(1));
    let c = client();
    let psbt = good_psbt(1);
    let body = json_of(submit_json(&c, &node, &psbt), StatusCode::ACCEPTED);
    let tx_id = body["tx_id"].as_str().expect("tx_id").to_string();
    assert_eq!(tx_id.len(), 64);
    // The same PSBT as bytes is the same transaction.
    let again = json_of(submit_binary(&c, &node, &psbt), StatusCode::ACCEPTED);
    assert_eq!(again["tx_id"], tx_id.as_str());
    // Another one, as bytes.
    let other = json_of(submit_binary(&c, &node, &good_psbt(2)), StatusCode::ACCEPTED);
    assert_ne!(other["tx_id"], tx_id.as_str());

    let got =
        json_of(authed(c.get(node.url(&format!("/api/v1/transactions/{tx_id}")))).send().unwrap(), StatusCode::OK);
    assert_eq!(got["tx_id"], tx_id.as_str());
    assert_eq!(got["state"], "voting", "{got}");
    assert_eq!(got["proposer"], 1);
    assert_eq!(got["psbt_base64"], b64(&psbt).as_str());
    let states: Vec<&str> = got["history"].as_array().unwrap().iter().map(|h| h["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["received", "voting"]);
    // Fields the broadcasting work fills are there, and null.
    for field in ["signed_psbt_base64", "confirmations", "signed_tx_hex", "txid"] {
        assert!(got.as_object().unwrap().contains_key(field), "{field} missing from {got}");
        assert!(got[field].is_null(), "{field}: {}", got[field]);
    }
    // The node's own vote, with a signature that verifies under its vote key.
    let votes = got["votes"].as_array().unwrap();
    assert_eq!(votes.len(), 1, "{got}");
    let vote = &votes[0];
    assert_eq!(
        (vote["voter"].as_u64(), vote["decision"].as_str(), vote["own"].as_bool()),
        (Some(1), Some("approve"), Some(true))
    );
    let signature: [u8; 64] = hex::decode(vote["signature_hex"].as_str().unwrap()).unwrap().try_into().unwrap();
    let id = TxId(hex::decode(&tx_id).unwrap().try_into().unwrap());
    let signed = VoteBody { tx: id, voter: NodeId(1), decision: Decision::Approve }.signing_bytes(CLUSTER_ID);
    vote_key(NodeId(1))
        .verifying_key()
        .verify(&signed, &ed25519_dalek::Signature::from_bytes(&signature))
        .expect("the vote's signature verifies");

    // Listed, and filtered by state.
    let list = json_of(authed(c.get(node.url("/api/v1/transactions"))).send().unwrap(), StatusCode::OK);
    assert_eq!(list["total"], 2);
    let ids: BTreeSet<&str> =
        list["transactions"].as_array().unwrap().iter().map(|t| t["tx_id"].as_str().unwrap()).collect();
    assert!(ids.contains(tx_id.as_str()), "{list}");
    let voting =
        json_of(authed(c.get(node.url("/api/v1/transactions?state=voting&limit=1"))).send().unwrap(), StatusCode::OK);
    assert_eq!((voting["total"].as_u64(), voting["transactions"].as_array().unwrap().len()), (Some(2), 1));
    let page2 = json_of(
        authed(c.get(node.url("/api/v1/transactions?state=voting&limit=1&offset=1"))).send().unwrap(),
        StatusCode::OK,
    );
    assert_ne!(page2["transactions"][0]["tx_id"], voting["transactions"][0]["tx_id"], "pages overlap");
    let signed = json_of(authed(c.get(node.url("/api/v1/transactions?state=signed"))).send().unwrap(), StatusCode::OK);
    assert_eq!(signed["total"], 0);
    assert_eq!(signed["transactions"], json!([]));
}

#[test]
fn bad_psbts_get_400_naming_the_problem_and_the_node_serves_on() {
    let node = TestNode::start(Options::keyed(1));
    let c = client();
    let good = good_psbt(10);
    let cut = &good[..good.len() / 2];
    let foreign = psbt(&foreign_script(), 100_000, 90_000, 11);
    let no_fee = psbt(&fixture_group_key().script_pubkey(), 90_000, 90_000, 12);
    let cases: Vec<(&str, Response, StatusCode, &str, Option<&str>)> = vec![
        (
            "garbage bytes",
            submit_binary(&c, &node, b"definitely not a psbt"),
            StatusCode::BAD_REQUEST,
            "invalid_psbt",
            Some("malformed"),
        ),
        (
            "truncated, binary",
            submit_binary(&c, &node, cut),
            StatusCode::BAD_REQUEST,
            "invalid_psbt",
            Some("truncated"),
        ),
        ("truncated, base64", submit_json(&c, &node, cut), StatusCode::BAD_REQUEST, "invalid_psbt", Some("truncated")),
        (
            "foreign input",
            submit_json(&c, &node, &foreign),
            StatusCode::BAD_REQUEST,
            "invalid_psbt",
            Some("foreign_input"),
        ),
        ("no fee", submit_binary(&c, &node, &no_fee), StatusCode::BAD_REQUEST, "invalid_psbt", Some("no_fee")),
        (
            "bad base64",
            authed(c.post(node.url("/api/v1/transactions")))
                .json(&json!({"psbt": "%%% not base64 %%%"}))
                .send()
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_psbt",
            Some("bad_base64"),
        ),
        (
            "malformed JSON",
            authed(c.post(node.url("/api/v1/transactions")))
                .header("content-type", "application/json")
                .body("{\"psbt\": ")
                .send()
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            None,
        ),
        (
            "JSON without the psbt field",
            authed(c.post(node.url("/api/v1/transactions"))).json(&json!({"transaction": "x"})).send().unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            None,
        ),
        (
            "no content type",
            authed(c.post(node.url("/api/v1/transactions"))).body(good.clone()).send().unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            None,
        ),
    ];
    for (i, (what, resp, status, code, problem)) in cases.into_iter().enumerate() {
        let (got_code, got_problem, body) = error_of(resp, status);
        assert_eq!((got_code.as_str(), got_problem.as_deref()), (code, problem), "{what}: {body}");
        still_serves(&c, &node, 100 + i as u8);
    }
    let foreign_message = error_of(submit_json(&c, &node, &foreign), StatusCode::BAD_REQUEST).2;
    assert!(
        foreign_message["error"]["message"].as_str().unwrap().contains("does not spend the cluster's"),
        "the core's reason is the message: {foreign_message}"
    );
}

#[test]
fn a_missing_or_wrong_token_is_401_and_open_routes_need_none() {
    let node = TestNode::start(Options::keyed(1));
    let c = client();
    let url = node.url("/api/v1/dkg/status");
    let cases = [
        ("no header", c.get(&url)),
        ("wrong token", c.get(&url).bearer_auth("not-a-token")),
        ("a token's digest as token", c.get(&url).bearer_auth(hex::encode(operators()[0].token_sha256))),
        ("basic auth", c.get(&url).basic_auth("alice", Some(ALICE_TOKEN))),
        ("empty bearer", c.get(&url).header("authorization", "Bearer ")),
    ];
    for (what, request) in cases {
        let resp = request.send().unwrap();
        assert_eq!(
            resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()),
            Some("Bearer realm=\"mpc-custody\""),
            "{what}"
        );
        let (code, _, _) = error_of(resp, StatusCode::UNAUTHORIZED);
        assert_eq!(code, "unauthorized", "{what}");
    }
    // Mutating requests without a token are refused before they reach the
    // core: nothing is submitted.
    let resp = c.post(node.url("/api/v1/transactions")).json(&json!({"psbt": b64(&good_psbt(1))})).send().unwrap();
    assert_eq!(error_of(resp, StatusCode::UNAUTHORIZED).0, "unauthorized");
    let list = json_of(authed(c.get(node.url("/api/v1/transactions"))).send().unwrap(), StatusCode::OK);
    assert_eq!(list["total"], 0, "an unauthenticated submission got through");
    // Both operators' tokens work.
    json_of(c.get(&url).bearer_auth(ALICE_TOKEN).send().unwrap(), StatusCode::OK);
    json_of(c.get(&url).bearer_auth(BOB_TOKEN).send().unwrap(), StatusCode::OK);
    // Health, metrics and the OpenAPI document are open.
    assert_eq!(c.get(node.url("/api/v1/health?probe=live")).send().unwrap().status(), StatusCode::OK);
    assert_eq!(c.get(node.url("/metrics")).send().unwrap().status(), StatusCode::OK);
    assert_eq!(c.get(node.url("/api/v1/openapi.json")).send().unwrap().status(), StatusCode::OK);
}

#[test]
fn an_oversized_body_is_413_and_the_node_serves_on() {
    let node = TestNode::start(Options::keyed(1));
    let c = client();
    let big = vec![0x70u8; MAX_BODY + 1];
    let (code, _, _) = error_of(submit_binary(&c, &node, &big), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(code, "payload_too_large");
    let big_json = json!({ "psbt": "A".repeat(MAX_BODY) });
    let resp = authed(c.post(node.url("/api/v1/transactions"))).json(&big_json).send().unwrap();
    assert_eq!(error_of(resp, StatusCode::PAYLOAD_TOO_LARGE).0, "payload_too_large");
    // Exactly at the limit is read (and judged on its content).
    let at_limit = vec![0x70u8; MAX_BODY];
    let (code, problem, _) = error_of(submit_binary(&c, &node, &at_limit), StatusCode::BAD_REQUEST);
    assert_eq!((code.as_str(), problem.as_deref()), ("invalid_psbt", Some("malformed")));
    still_serves(&c, &node, 1);
}

#[test]
fn unknown_routes_methods_and_ids_get_json_errors() {
    let node = TestNode::start(Options::keyed(1));
    let c = client();
    let unknown_tx = "ab".repeat(32);
    let cases: Vec<(&str, Response, StatusCode, &str)> = vec![
        ("unknown route", authed(c.get(node.url("/api/v1/nope"))).send().unwrap(), StatusCode::NOT_FOUND, "not_found"),
        ("root", c.get(node.url("/")).send().unwrap(), StatusCode::NOT_FOUND, "not_found"),
        (
            "wrong method",
            authed(c.delete(node.url("/api/v1/transactions"))).send().unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            "GET on initiate",
            authed(c.get(node.url("/api/v1/dkg/initiate"))).send().unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            "not a tx id",
            authed(c.get(node.url("/api/v1/transactions/zz"))).send().unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "unknown tx",
            authed(c.get(node.url(&format!("/api/v1/transactions/{unknown_tx}")))).send().unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "unknown state",
            authed(c.get(node.url("/api/v1/transactions?state=happy"))).send().unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "zero limit",
            authed(c.get(node.url("/api/v1/transactions?limit=0"))).send().unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "huge limit",
            authed(c.get(node.url("/api/v1/transactions?limit=100000"))).send().unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "limit not a number",
            authed(c.get(node.url("/api/v1/transactions?limit=ten"))).send().unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "negative offset",
            authed(c.get(node.url("/api/v1/transactions?offset=-1"))).send().unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "unknown probe",
            c.get(node.url("/api/v1/health?probe=maybe")).send().unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for (i, (what, resp, status, code)) in cases.into_iter().enumerate() {
        let allow = resp.headers().get("allow").map(|v| v.to_str().unwrap().to_string());
        let (got, _, body) = error_of(resp, status);
        assert_eq!(got, code, "{what}: {body}");
        if status == StatusCode::METHOD_NOT_ALLOWED {
            assert!(allow.is_some(), "{what}: the Allow header was lost");
        }
        still_serves(&c, &node, 10 + i as u8);
    }
    // An offset past the end is an empty page, even the largest one.
    let far = json_of(
        authed(c.get(node.url(&format!("/api/v1/transactions?offset={}", u64::MAX)))).send().unwrap(),
        StatusCode::OK,
    );
    assert_eq!(far["transactions"], json!([]));
}

#[test]
fn dkg_on_a_keyed_node_is_409_with_the_key_and_status_shows_it() {
    let node = TestNode::start(Options::keyed(1));
    let c = client();
    let key = fixture_group_key();
    let (code, _, body) =
        error_of(authed(c.post(node.url("/api/v1/dkg/initiate"))).send().unwrap(), StatusCode::CONFLICT);
    assert_eq!(code, "dkg_exists");
    assert_eq!(body["error"]["public_key_hex"], key.hex().as_str(), "{body}");
    let status = json_of(authed(c.get(node.url("/api/v1/dkg/status"))).send().unwrap(), StatusCode::OK);
    assert_eq!(status["stage"], "done");
    assert_eq!(status["public_key_hex"], key.hex().as_str());
    assert_eq!(status["address"], key.address(NETWORK).to_string().as_str());
    assert_eq!(status["network"], "regtest");
    assert_eq!(status["node"], 1);
    still_serves(&c, &node, 1);
}

#[test]
fn an_unkeyed_node_starts_dkg_once_and_refuses_submissions() {
    let node = TestNode::start(Options::unkeyed(2));
    let c = client();
    let (code, _, _) = error_of(submit_json(&c, &node, &good_psbt(1)), StatusCode::CONFLICT);
    assert_eq!(code, "no_key");
    let started = json_of(authed(c.post(node.url("/api/v1/dkg/initiate"))).send().unwrap(), StatusCode::ACCEPTED);
    let dkg = started["dkg_id"].as_str().expect("dkg_id").to_string();
    assert!(dkg.starts_with("dkg-2-"), "{dkg}");
    let (code, _, body) =
        error_of(authed(c.post(node.url("/api/v1/dkg/initiate"))).send().unwrap(), StatusCode::CONFLICT);
    assert_eq!(code, "dkg_running");
    assert_eq!(body["error"]["dkg_id"], dkg.as_str());
    let status = json_of(authed(c.get(node.url("/api/v1/dkg/status"))).send().unwrap(), StatusCode::OK);
    assert_eq!(status["stage"], "waiting_for_primes", "no primes in this test: {status}");
    assert!(status["public_key_hex"].is_null());
    let health = json_of(c.get(node.url("/api/v1/health")).send().unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    let reasons: Vec<&str> = health["reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    assert!(reasons.iter().any(|r| r.contains("no key yet")), "{reasons:?}");
}

#[test]
fn a_node_holding_an_unconfirmed_key_refuses_a_new_dkg_with_the_attempt_and_the_missing_members() {
    // Restarted after keygen with its share pending and no member's
    // confirmation on record: the key may still be confirmed, so a new
    // attempt must wait (409 `dkg_unconfirmed`), and nothing is signed.
    let node = TestNode::start(Options::pending(3));
    let c = client();
    let dkg = fixture_records()[&NodeId(3)]
        .iter()
        .find_map(|r| match r {
            Record::KeyShare { dkg, .. } => Some(dkg.to_string()),
            _ => None,
        })
        .expect("the fixture has a key share");
    let (code, _, body) =
        error_of(authed(c.post(node.url("/api/v1/dkg/initiate"))).send().unwrap(), StatusCode::CONFLICT);
    assert_eq!(code, "dkg_unconfirmed", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert_eq!(body["error"]["dkg_id"], dkg.as_str(), "{body}");
    assert_eq!(body["error"]["missing"], json!([1, 2, 3, 4, 5]), "{body}");
    assert!(message.contains(&dkg), "the message names the attempt: {message}");
    assert!(body["error"]["public_key_hex"].is_null(), "a pending key is not the cluster's key: {body}");
    let status = json_of(authed(c.get(node.url("/api/v1/dkg/status"))).send().unwrap(), StatusCode::OK);
    assert_eq!(status["stage"], "confirming", "{status}");
    assert!(status["public_key_hex"].is_null(), "{status}");
    let (code, _, _) = error_of(submit_json(&c, &node, &good_psbt(1)), StatusCode::CONFLICT);
    assert_eq!(code, "no_key", "a pending key signs nothing");
    let health = json_of(c.get(node.url("/api/v1/health")).send().unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    let reasons: Vec<&str> = health["reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    assert!(reasons.iter().any(|r| r.contains("no key yet")), "{reasons:?}");
}

#[test]
fn the_openapi_document_is_openapi_3_and_lists_every_route() {
    let node = TestNode::start(Options::keyed(1));
    let c = client();
    let doc = json_of(c.get(node.url("/api/v1/openapi.json")).send().unwrap(), StatusCode::OK);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", doc["openapi"]);
    let paths = doc["paths"].as_object().expect("paths");
    let mut documented = BTreeSet::new();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let served: BTreeSet<(String, String)> =
        mpc_node::api::routes().iter().map(|(m, p, _)| (m.to_string(), p.to_string())).collect();
    assert_eq!(documented, served, "the document and the router disagree");
    assert_eq!(served.len(), 9);
    // Every route the router has answers (none is a 404 of the fallback).
    for (method, path, _) in mpc_node::api::routes() {
        let url = node.url(&path.replace("{id}", &"00".repeat(32)));
        let request = if method == "GET" { c.get(url) } else { c.post(url) };
        let resp = authed(request).send().unwrap();
        let status = resp.status();
        let body: Value = resp.json().unwrap_or(Value::Null);
        assert!(
            status != StatusCode::NOT_FOUND || body["error"]["code"] != "not_found" || path.contains("{id}"),
            "{method} {path} is not routed: {body}"
        );
    }
    // Authenticated routes name the bearer scheme; open ones do not.
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    for (method, path, authenticated) in mpc_node::api::routes() {
        let op = &doc["paths"][path][method.to_lowercase()];
        let secured = op["security"].as_array().is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
        assert_eq!(secured, authenticated, "{method} {path}");
    }
    // Both ways to submit are in the schema, and so are the error shape and
    // the fields broadcasting fills later.
    let content = &doc["paths"]["/api/v1/transactions"]["post"]["requestBody"]["content"];
    assert!(
        content.get("application/json").is_some() && content.get("application/octet-stream").is_some(),
        "{content}"
    );
    let schemas = &doc["components"]["schemas"];
    assert!(schemas["ErrorBody"].is_object());
    for field in ["signed_psbt_base64", "confirmations", "votes", "history", "signed_tx_hex", "txid"] {
        assert!(schemas["TransactionView"]["properties"].get(field).is_some(), "TransactionView lacks {field}");
    }
}

#[test]
fn every_mutating_request_is_audited_with_the_operator_name() {
    let node = TestNode::start(Options::keyed(1));
    let c = client();
    let tx = still_serves(&c, &node, 1);
    let resp = c
        .post(node.url("/api/v1/transactions"))
        .bearer_auth(BOB_TOKEN)
        .json(&json!({"psbt": b64(b"junk")}))
        .send()
        .unwrap();
    error_of(resp, StatusCode::BAD_REQUEST);
    error_of(c.post(node.url("/api/v1/dkg/initiate")).bearer_auth(BOB_TOKEN).send().unwrap(), StatusCode::CONFLICT);
    // Unauthenticated attempts and reads write no row.
    c.post(node.url("/api/v1/dkg/initiate")).bearer_auth("wrong").send().unwrap();
    authed(c.get(node.url("/api/v1/transactions"))).send().unwrap();

    let rows = node.operator_audit();
    assert_eq!(rows.len(), 3, "{rows:#?}");
    assert_eq!((rows[0]["operator"].as_str(), rows[0]["action"].as_str()), (Some("alice"), Some("transaction_submit")));
    assert_eq!(rows[0]["outcome"], format!("accepted {tx}").as_str());
    assert_eq!((rows[1]["operator"].as_str(), rows[1]["action"].as_str()), (Some("bob"), Some("transaction_submit")));
    assert!(rows[1]["outcome"].as_str().unwrap().starts_with("refused: invalid_psbt (malformed)"), "{}", rows[1]);
    assert_eq!((rows[2]["operator"].as_str(), rows[2]["action"].as_str()), (Some("bob"), Some("dkg_initiate")));
    assert!(rows[2]["outcome"].as_str().unwrap().starts_with("refused: dkg_exists"), "{}", rows[2]);
    for row in &rows {
        let text = row.to_string();
        assert!(!text.contains(ALICE_TOKEN) && !text.contains(BOB_TOKEN), "a token reached the audit log: {text}");
    }
    // The rows are links of the one chain.
    let store = node.store.as_ref().unwrap();
    node.block_on(store.verify_audit()).expect("the audit chain verifies");
}

#[test]
fn presignature_status_reports_the_pool_per_signer_set() {
    let node = TestNode::start(Options::keyed(1));
    let c = client();
    let s = json_of(authed(c.get(node.url("/api/v1/presignatures/status"))).send().unwrap(), StatusCode::OK);
    let own_ready =
        fixture_records()[&NodeId(1)].iter().filter(|r| matches!(r, mpc_core::Record::PresigReady { .. })).count();
    assert_eq!(s["own_ready"].as_u64(), Some(own_ready as u64), "{s}");
    assert!(s["ready"].as_u64().unwrap() >= own_ready as u64, "{s}");
    let sets = s["signer_sets"].as_array().unwrap();
    assert!(!sets.is_empty());
    let per_set: u64 = sets.iter().map(|x| x["ready"].as_u64().unwrap()).sum();
    assert_eq!(per_set, s["ready"].as_u64().unwrap(), "signer sets add up to the total: {s}");
    assert!(sets.iter().all(|x| x["signers"].as_array().unwrap().len() == 3));
    assert_eq!((s["low_water"].as_u64(), s["target"].as_u64(), s["max"].as_u64()), (Some(50), Some(100), Some(150)));
    assert_eq!((s["consumed"].as_u64(), s["discarded"].as_u64()), (Some(0), Some(0)));
    assert_eq!(s["fill_rate"]["window_seconds"], 600);
    assert_eq!(s["fill_rate"]["ready_in_window"], 0, "nothing was generated while this node ran");
}

#[test]
fn health_names_what_keeps_the_node_from_being_ready() {
    let node = TestNode::start(Options::keyed(1));
    let c = client();
    let h = json_of(c.get(node.url("/api/v1/health")).send().unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!((h["live"].as_bool(), h["ready"].as_bool()), (Some(true), Some(false)));
    let reasons: Vec<&str> = h["reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    assert!(reasons.iter().any(|r| r.starts_with("etcd:")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("peers connected")), "{reasons:?}");
    assert!(!reasons.iter().any(|r| r.contains("no key")), "the node has a key: {reasons:?}");
    assert_eq!(h["key_present"], true);
    assert_eq!(h["database"]["ok"], true);
    let live = json_of(c.get(node.url("/api/v1/health?probe=live")).send().unwrap(), StatusCode::OK);
    assert_eq!(live["reasons"], h["reasons"]);
}

#[test]
fn metrics_are_prometheus_text_with_the_pool_and_the_votes() {
    let node = TestNode::start(Options::keyed(1));
    let c = client();
    still_serves(&c, &node, 1);
    let resp = c.get(node.url("/metrics")).send().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = resp.text().unwrap();
    let value = |series: &str| -> f64 {
        let line =
            text.lines().find(|l| l.starts_with(&format!("{series} "))).unwrap_or_else(|| panic!("{series} missing"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let status = json_of(authed(c.get(node.url("/api/v1/presignatures/status"))).send().unwrap(), StatusCode::OK);
    assert_eq!(value("presignature_pool_size"), status["ready"].as_f64().unwrap());
    assert_eq!(value("mpc_votes_total{decision=\"approve\"}"), 1.0);
    assert_eq!(value("mpc_transactions{state=\"voting\"}"), 1.0);
    assert_eq!(value("mpc_dkg_state{stage=\"done\"}"), 1.0);
    assert!(value("mpc_persist_duration_seconds_count") >= 1.0);
    assert!(value("mpc_handle_duration_seconds_count{input=\"command\"}") >= 2.0, "the submission and a status");
}

#[test]
fn without_a_database_reads_answer_503_and_submissions_still_work() {
    let node = TestNode::start(Options { database: false, ..Options::keyed(1) });
    let c = client();
    still_serves(&c, &node, 1);
    let (code, _, _) =
        error_of(authed(c.get(node.url("/api/v1/transactions"))).send().unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(code, "unavailable");
    let (code, _, _) = error_of(
        authed(c.get(node.url(&format!("/api/v1/transactions/{}", "00".repeat(32))))).send().unwrap(),
        StatusCode::SERVICE_UNAVAILABLE,
    );
    assert_eq!(code, "unavailable");
}

#[test]
fn hostile_requests_get_json_errors_and_never_break_the_node() {
    let node = TestNode::start(Options::keyed(1));
    let c = client();
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let mut random = Vec::new();
    let mut x: u32 = 0x9e37_79b9;
    for _ in 0..4096 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        random.push((x & 0xff) as u8);
    }
    // A PSBT that starts right and then claims a huge length.
    let mut lying = b"psbt\xff".to_vec();
    lying.extend_from_slice(&[0xff; 16]);
    let bodies: Vec<(&str, &str, Vec<u8>)> = vec![
        ("deeply nested JSON", "application/json", deep.into_bytes()),
        ("random bytes as JSON", "application/json", random.clone()),
        ("random bytes as a PSBT", "application/octet-stream", random),
        ("a lying length", "application/octet-stream", lying),
        ("empty JSON", "application/json", Vec::new()),
        ("empty PSBT", "application/octet-stream", Vec::new()),
        ("psbt is a number", "application/json", b"{\"psbt\": 12}".to_vec()),
        ("psbt is null", "application/json", b"{\"psbt\": null}".to_vec()),
        ("invalid UTF-8 in JSON", "application/json", b"{\"psbt\": \"\xff\xfe\"}".to_vec()),
    ];
    for (i, (what, content_type, body)) in bodies.into_iter().enumerate() {
        let resp = authed(c.post(node.url("/api/v1/transactions")))
            .header("content-type", content_type)
            .body(body)
            .send()
            .unwrap();
        let status = resp.status();
        assert!(status.is_client_error(), "{what}: {status}");
        error_of(resp, status);
        still_serves(&c, &node, 40 + i as u8);
    }
    let long_path = format!("/api/v1/transactions/{}", "f".repeat(8000));
    let resp = authed(c.get(node.url(&long_path))).send().unwrap();
    let status = resp.status();
    assert!(status.is_client_error(), "{status}");
    error_of(resp, status);
    for weird in [
        "/api/v1/transactions/%00",
        "/api/v1/transactions/..%2F..%2Fetc",
        "/api/v1/%ff%fe",
        "/metrics/../api/v1/dkg/status",
    ] {
        let resp = c.get(node.url(weird)).send().unwrap();
        let status = resp.status();
        assert!(status.is_client_error(), "{weird}: {status}");
        error_of(resp, status);
    }
    still_serves(&c, &node, 99);
    json_of(c.get(node.url("/api/v1/health?probe=live")).send().unwrap(), StatusCode::OK);
}
