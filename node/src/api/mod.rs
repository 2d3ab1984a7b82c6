//! The node's HTTP API (DESIGN §7): JSON over axum, an OpenAPI 3 document
//! generated from the handlers' types, operator bearer tokens, and one
//! JSON error shape with stable codes for everything that can go wrong.
//!
//! What the routes read and write:
//! - commands (DKG, submissions) and live status go to the core through the
//!   [`Control`] plane, so they are handled between two steps and answered
//!   only once the step that carried them out is durable;
//! - transaction reads come from the database, which keeps finished
//!   transactions the core forgets;
//! - health comes from what the shell publishes, so it answers even while
//!   the core is busy; metrics render the node's [`Metrics`].
//!
//! Every route but health, metrics and the OpenAPI document needs
//! `Authorization: Bearer <token>`. Tokens are stored as SHA-256 digests in
//! the config; a request's token is hashed and compared with every
//! operator's digest in constant time, all of them, so the answer's timing
//! says nothing about which digest, or how much of one, matched. Every
//! mutating request (DKG initiate, transaction submit) gets an audit row
//! with the operator's name, the action and the outcome, refusals included.
//!
//! Nothing a client sends can panic the node: bodies are size-limited,
//! every extractor's rejection is mapped to the JSON error, inputs are
//! parsed with fallible parsers only, and a panic that slipped through
//! anyway is caught and answered with a 500 `internal` error.

pub mod error;
mod handlers;
pub mod openapi;
pub mod psbt;
pub mod types;

pub use error::ApiError;

use crate::config::Operator;
use crate::control::Control;
use crate::metrics::Metrics;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use bitcoin::ScriptBuf;
use mpc_core::{Millis, NodeId, StatusReport};
use mpc_io_store::Store;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::sync::{Arc, OnceLock};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// What the API serves from.
#[derive(Clone)]
pub struct ApiState {
    pub control: Control,
    /// The node's database: transaction reads and the operator audit rows.
    /// `None` only in tests without a database; then transaction reads
    /// answer 503 and mutating requests are not audited.
    pub store: Option<Arc<Store>>,
    pub metrics: Arc<Metrics>,
    pub operators: Vec<Operator>,
    pub node: NodeId,
    pub network: bitcoin::Network,
    /// Signers needed for a signature: readiness needs that many members.
    pub threshold: u16,
}

/// The operator a request was authenticated as.
#[derive(Clone, Debug)]
pub struct Caller {
    pub operator: String,
}

/// [`ApiState`] plus what the API learns while running.
pub(crate) struct Inner {
    state: ApiState,
    max_body_bytes: usize,
    /// The cluster's P2WPKH script, once the core has a key (it never
    /// changes after): names what is wrong with a refused PSBT.
    cluster_script: OnceLock<ScriptBuf>,
}

impl Inner {
    fn store(&self) -> Result<&Store, ApiError> {
        self.state.store.as_deref().ok_or_else(|| {
            ApiError::unavailable("this node has no database attached, and transactions are read from it")
        })
    }

    /// Status reports the API fetches refresh the metrics' gauges too.
    fn metrics_from(&self, report: &StatusReport) {
        self.state.metrics.status(report);
        if let Some(key) = &report.public_key_hex {
            self.learn_key(key);
        }
    }

    fn learn_key(&self, public_key_hex: &str) {
        if self.cluster_script.get().is_some() {
            return;
        }
        let key = hex::decode(public_key_hex).ok().and_then(|b| <[u8; 33]>::try_from(b).ok());
        if let Some(group) = key.and_then(|k| mpc_core::tx::GroupKey::from_compressed(k).ok()) {
            let _ = self.cluster_script.set(group.script_pubkey());
        }
    }

    async fn cluster_script(&self) -> Option<ScriptBuf> {
        if self.cluster_script.get().is_none() {
            if let Ok(report) = self.state.control.status().await {
                self.metrics_from(&report);
            }
        }
        self.cluster_script.get().cloned()
    }

    /// Writes the request's audit row, then answers with `result`. A
    /// request whose audit row cannot be written is answered 500
    /// `audit_failed`, saying what was done (a retried submission is
    /// idempotent; a retried DKG initiate finds the running one).
    async fn audited<T: IntoResponse>(
        &self,
        caller: &Caller,
        action: &str,
        outcome: &str,
        result: Result<T, ApiError>,
    ) -> Response {
        tracing::info!(operator = %caller.operator, action, outcome, "operator request");
        if let Some(store) = &self.state.store {
            if let Err(e) = store.audit_operator_request(now_millis(), &caller.operator, action, outcome).await {
                tracing::error!(operator = %caller.operator, action, outcome, error = %e, "audit row not written");
                return ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "audit_failed",
                    format!("the request's audit row could not be written; the request itself ended: {outcome}"),
                )
                .into_response();
            }
        }
        match result {
            Ok(ok) => ok.into_response(),
            Err(e) => e.into_response(),
        }
    }
}

/// Milliseconds since the Unix epoch: the audit log's clock.
fn now_millis() -> Millis {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Millis(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// One route: method, path, whether it needs a token, its handler.
struct Route {
    method: &'static str,
    path: &'static str,
    authenticated: bool,
    handler: MethodRouter<Arc<Inner>>,
}

/// Every route the API serves, in one table: the router is built from it,
/// and [`routes`] lists it for the tests that hold the OpenAPI document
/// against it.
fn table() -> Vec<Route> {
    let route = |method, path, authenticated, handler| Route { method, path, authenticated, handler };
    vec![
        route("POST", "/api/v1/dkg/initiate", true, post(handlers::dkg_initiate)),
        route("GET", "/api/v1/dkg/status", true, get(handlers::dkg_status)),
        route("GET", "/api/v1/presignatures/status", true, get(handlers::presignatures_status)),
        route("POST", "/api/v1/transactions", true, post(handlers::submit_transaction)),
        route("GET", "/api/v1/transactions", true, get(handlers::list_transactions)),
        route("GET", "/api/v1/transactions/{id}", true, get(handlers::get_transaction)),
        route("GET", "/api/v1/health", false, get(handlers::health)),
        route("GET", "/metrics", false, get(handlers::metrics)),
        route("GET", "/api/v1/openapi.json", false, get(handlers::openapi)),
    ]
}

/// `(method, path, needs a token)` of every route.
pub fn routes() -> Vec<(&'static str, &'static str, bool)> {
    table().into_iter().map(|r| (r.method, r.path, r.authenticated)).collect()
}

/// The API as an axum router, ready for [`serve`]. Bodies above
/// `max_body_bytes` are refused with 413 `payload_too_large`.
pub fn router(state: ApiState, max_body_bytes: usize) -> Router {
    let inner = Arc::new(Inner { state, max_body_bytes, cluster_script: OnceLock::new() });
    let mut app: Router<Arc<Inner>> = Router::new();
    for r in table() {
        let handler = if r.authenticated {
            r.handler.route_layer(middleware::from_fn_with_state(inner.clone(), authenticate))
        } else {
            r.handler
        };
        app = app.route(r.path, handler);
    }
    app.fallback(handlers::no_route)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::map_response(json_errors))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        // Real failures are logged where they happen (handlers, panics,
        // audit); a 503 from a readiness probe is an answer, not an error.
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .with_state(inner)
}

/// Serves `app` on `listener` until `shutdown` completes, then lets the
/// requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// The operator whose token digest equals `digest`, found in constant
/// time: every operator's digest is compared, whatever matched before.
fn operator_for(operators: &[Operator], digest: &[u8; 32]) -> Option<usize> {
    let mut found = subtle::Choice::from(0u8);
    let mut index = 0u64;
    for (i, op) in operators.iter().enumerate() {
        let equal = op.token_sha256.ct_eq(digest);
        index = u64::conditional_select(&index, &(i as u64), equal);
        found |= equal;
    }
    bool::from(found).then_some(index as usize)
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The authentication layer of every route that needs a token.
async fn authenticate(State(inner): State<Arc<Inner>>, mut request: Request, next: Next) -> Response {
    let Some(token) = bearer_token(request.headers()) else {
        tracing::warn!(path = %request.uri().path(), "request without a bearer token refused");
        return ApiError::unauthorized().into_response();
    };
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let Some(index) = operator_for(&inner.state.operators, &digest) else {
        tracing::warn!(path = %request.uri().path(), "request with an unknown token refused");
        return ApiError::unauthorized().into_response();
    };
    let operator = inner.state.operators[index].name.clone();
    request.extensions_mut().insert(Caller { operator });
    next.run(request).await
}

/// Turns any error response that is not already our JSON (the router's
/// 405, an extractor's plain-text rejection) into it.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .ok()
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .filter(|t| !t.is_empty());
    let mut fixed = ApiError::from_status(status, text).into_response();
    // Keep what the original said beyond its body (405's Allow header).
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            fixed.headers_mut().entry(name.clone()).or_insert(value.clone());
        }
    }
    fixed
}

/// The answer when a handler panicked: a bug, never the client's doing.
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %what, "an API handler panicked");
    ApiError::internal("the node could not handle this request (a bug; the node's log has it)").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(name: &str, token: &str) -> Operator {
        Operator { name: name.into(), token_sha256: Sha256::digest(token.as_bytes()).into() }
    }

    #[test]
    fn tokens_find_their_operator_and_nothing_else() {
        let ops = [op("alice", "a-token"), op("bob", "b-token"), op("carol", "c-token")];
        let d = |t: &str| -> [u8; 32] { Sha256::digest(t.as_bytes()).into() };
        assert_eq!(operator_for(&ops, &d("a-token")), Some(0));
        assert_eq!(operator_for(&ops, &d("c-token")), Some(2));
        assert_eq!(operator_for(&ops, &d("b-token")), Some(1));
        assert_eq!(operator_for(&ops, &d("d-token")), None);
        assert_eq!(operator_for(&[], &d("a-token")), None);
    }

    #[test]
    fn only_a_bearer_header_carries_a_token() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer_token(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
    }
}
