//! SCAFFOLD, replaced by the API from branch api-metrics before anything
//! lands: just enough to bring the node process up meanwhile.

use crate::config::Operator;
use crate::control::Control;
use crate::metrics::Metrics;
use axum::extract::State;
use axum::routing::{get, post};
use axum::Json;
use mpc_core::{Command, NodeId};
use std::sync::Arc;

#[derive(Clone)]
pub struct ApiState {
    pub control: Control,
    pub store: Option<Arc<mpc_io_store::Store>>,
    pub metrics: Arc<Metrics>,
    pub operators: Vec<Operator>,
    pub node: NodeId,
    pub network: bitcoin::Network,
    pub threshold: u16,
}

pub fn router(state: ApiState, _max_body_bytes: usize) -> axum::Router {
    axum::Router::new()
        .route(
            "/api/v1/health",
            get(|State(s): State<ApiState>| async move {
                Json(serde_json::to_value(s.control.health()).unwrap_or_default())
            }),
        )
        .route(
            "/scaffold/status",
            get(|State(s): State<ApiState>| async move {
                Json(serde_json::to_value(s.control.status().await.ok()).unwrap_or_default())
            }),
        )
        .route(
            "/scaffold/dkg",
            post(|State(s): State<ApiState>| async move { format!("{:?}", s.control.call(Command::StartDkg).await) }),
        )
        .route(
            "/scaffold/submit",
            post(|State(s): State<ApiState>, body: axum::body::Bytes| async move {
                format!("{:?}", s.control.call(Command::SubmitPsbt { psbt: body.to_vec() }).await)
            }),
        )
        .with_state(state)
}
