//! One function per route. Each reads what it needs from the core (through
//! the control plane), the database or the metrics, and answers with the
//! API's own JSON types; every failure is an [`ApiError`].

use super::error::ApiError;
use super::psbt;
use super::types::*;
use super::{Caller, Inner};
use crate::control::PrimesState;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use mpc_core::vote::{Decision, SignedVote};
use mpc_core::{Command, DkgRefusal, DkgStage, Reply, SubmitRefusal, TxId, TxState};
use mpc_io_store::{StoredTransaction, TransactionSummary, TxStateKind};
use std::sync::Arc;
use std::time::Duration;

type Shared = State<Arc<Inner>>;

/// How long `/metrics` waits for the core's status before rendering what
/// it has: a scrape must answer even when the core is busy.
const SCRAPE_STATUS_WAIT: Duration = Duration::from_secs(2);
const DEFAULT_PAGE: u64 = 50;
const MAX_PAGE: u64 = 500;

pub(super) fn state_name(state: &TxState) -> (TxStateName, Option<String>) {
    let name = match TxStateKind::of(state) {
        TxStateKind::Received => TxStateName::Received,
        TxStateKind::Voting => TxStateName::Voting,
        TxStateKind::Approved => TxStateName::Approved,
        TxStateKind::Rejected => TxStateName::Rejected,
        TxStateKind::Expired => TxStateName::Expired,
        TxStateKind::Signing => TxStateName::Signing,
        TxStateKind::Signed => TxStateName::Signed,
        TxStateKind::Broadcast => TxStateName::Broadcast,
        TxStateKind::Confirmed => TxStateName::Confirmed,
        TxStateKind::Failed => TxStateName::Failed,
    };
    let reason = match state {
        TxState::Failed(reason) => Some(reason.clone()),
        _ => None,
    };
    (name, reason)
}

fn stage_name(stage: DkgStage) -> DkgStageName {
    match stage {
        DkgStage::NotStarted => DkgStageName::NotStarted,
        DkgStage::WaitingForPrimes => DkgStageName::WaitingForPrimes,
        DkgStage::AuxInfo => DkgStageName::AuxInfo,
        DkgStage::Keygen => DkgStageName::Keygen,
        DkgStage::Confirming => DkgStageName::Confirming,
        DkgStage::Done => DkgStageName::Done,
    }
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[utoipa::path(
    post,
    path = "/api/v1/dkg/initiate",
    tag = "dkg",
    description = "Starts distributed key generation with every member. Audited with the operator's name.",
    responses(
        (status = 202, description = "Key generation started", body = DkgInitiated),
        (status = 401, description = "No valid operator token", body = ErrorBody),
        (status = 409, description = "`dkg_exists` (with the key), `dkg_running`, or `dkg_unconfirmed` (this node holds a share of an attempt not every member confirmed and none abandoned: with the attempt and the missing members)", body = ErrorBody),
        (status = 503, description = "`busy` or `unavailable`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn dkg_initiate(State(inner): Shared, Extension(caller): Extension<Caller>) -> Response {
    let result = match inner.state.control.call(Command::StartDkg).await {
        Ok(Reply::DkgStarted(Ok(dkg))) => Ok(dkg.to_string()),
        Ok(Reply::DkgStarted(Err(DkgRefusal::AlreadyKeyed { public_key_hex }))) => {
            let mut e = ApiError::new(
                StatusCode::CONFLICT,
                "dkg_exists",
                format!("this cluster already has a key: {public_key_hex}"),
            );
            e.detail.public_key_hex = Some(public_key_hex);
            Err(e)
        }
        Ok(Reply::DkgStarted(Err(refusal @ DkgRefusal::AwaitingConfirmation { .. }))) => {
            let DkgRefusal::AwaitingConfirmation { dkg, missing } = &refusal else { unreachable!() };
            let mut e = ApiError::new(StatusCode::CONFLICT, "dkg_unconfirmed", refusal.to_string());
            e.detail.dkg_id = Some(dkg.to_string());
            e.detail.missing = Some(missing.iter().map(|m| m.0).collect());
            Err(e)
        }
        Ok(Reply::DkgStarted(Err(DkgRefusal::AlreadyRunning { dkg }))) => {
            let mut e =
                ApiError::new(StatusCode::CONFLICT, "dkg_running", format!("key generation {dkg} is already running"));
            e.detail.dkg_id = Some(dkg.to_string());
            Err(e)
        }
        Ok(other) => Err(unexpected_reply(&other)),
        Err(e) => Err(ApiError::from(e)),
    };
    let outcome = match &result {
        Ok(dkg) => format!("started {dkg}"),
        Err(e) => refusal_outcome(e),
    };
    let result = result.map(|dkg_id| (StatusCode::ACCEPTED, Json(DkgInitiated { dkg_id })));
    inner.audited(&caller, "dkg_initiate", &outcome, result).await
}

#[utoipa::path(
    get,
    path = "/api/v1/dkg/status",
    tag = "dkg",
    responses(
        (status = 200, description = "Where key generation stands at this node", body = DkgStatus),
        (status = 401, description = "No valid operator token", body = ErrorBody),
        (status = 503, description = "`busy` or `unavailable`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn dkg_status(State(inner): Shared) -> Result<Json<DkgStatus>, ApiError> {
    let report = inner.state.control.status().await?;
    inner.metrics_from(&report);
    Ok(Json(DkgStatus {
        node: report.node.0,
        stage: stage_name(report.dkg_stage),
        dkg_id: report.dkg.map(|d| d.to_string()),
        public_key_hex: report.public_key_hex,
        address: report.address,
        network: inner.state.network.to_string(),
        primes_ready: report.primes_ready,
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/presignatures/status",
    tag = "presignatures",
    responses(
        (status = 200, description = "The presignature pool as this node sees it", body = PresignatureStatus),
        (status = 401, description = "No valid operator token", body = ErrorBody),
        (status = 503, description = "`busy` or `unavailable`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn presignatures_status(State(inner): Shared) -> Result<Json<PresignatureStatus>, ApiError> {
    let report = inner.state.control.status().await?;
    inner.metrics_from(&report);
    let rate = inner.state.metrics.fill_rate();
    Ok(Json(PresignatureStatus {
        node: report.node.0,
        ready: count(report.pool_ready),
        generating: count(report.pool_generating),
        consumed: count(report.own_consumed),
        discarded: count(report.own_discarded),
        own_ready: count(report.own_ready),
        low_water: count(report.pool_low_water),
        target: count(report.pool_target),
        max: count(report.pool_max),
        fill_rate: FillRateStatus {
            per_minute: rate.per_minute,
            ready_in_window: count(rate.ready_in_window),
            window_seconds: rate.window.as_secs(),
        },
        signer_sets: report
            .pool_sets
            .iter()
            .map(|s| SignerSetStatus {
                signers: s.signers.iter().map(|n| n.0).collect(),
                ready: count(s.ready),
                generating: count(s.generating),
                spent: count(s.spent),
            })
            .collect(),
    }))
}

#[utoipa::path(
    post,
    path = "/api/v1/transactions",
    tag = "transactions",
    description = "Submits a PSBT (BIP-174) spending the cluster's P2WPKH outputs, for votes and signing. \
                   Idempotent: the same PSBT gives the same id. Audited with the operator's name.",
    request_body(
        description = "The PSBT as JSON with base64, or its bytes",
        content(
            (SubmitRequest = "application/json"),
            (Vec<u8> = "application/octet-stream"),
        )
    ),
    responses(
        (status = 202, description = "Accepted; votes follow", body = SubmitAccepted),
        (status = 400, description = "`invalid_psbt` (with `problem`) or `invalid_request`", body = ErrorBody),
        (status = 401, description = "No valid operator token", body = ErrorBody),
        (status = 409, description = "`no_key`: run DKG first", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 503, description = "`busy` or `unavailable`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn submit_transaction(
    State(inner): Shared,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = inner.submit(&headers, body).await;
    let outcome = match &result {
        Ok(tx) => format!("accepted {tx}"),
        Err(e) => refusal_outcome(e),
    };
    let result = result.map(|tx| (StatusCode::ACCEPTED, Json(SubmitAccepted { tx_id: tx.to_hex() })));
    inner.audited(&caller, "transaction_submit", &outcome, result).await
}

impl Inner {
    async fn submit(&self, headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<TxId, ApiError> {
        let body = body.map_err(|rejection| match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::payload_too_large(self.max_body_bytes),
            status => ApiError::from_status(status, Some(rejection.body_text())),
        })?;
        let kind = psbt::body_kind(headers)?;
        let bytes = psbt::psbt_bytes(kind, &body)?;
        psbt::parse_check(&bytes)?;
        match self.state.control.call(Command::SubmitPsbt { psbt: bytes.clone() }).await? {
            Reply::Submitted(Ok(tx)) => Ok(tx),
            Reply::Submitted(Err(SubmitRefusal::NoKey)) => Err(ApiError::new(
                StatusCode::CONFLICT,
                "no_key",
                "the cluster has no key yet: run DKG first (POST /api/v1/dkg/initiate)",
            )),
            Reply::Submitted(Err(SubmitRefusal::Invalid(message))) => {
                let script = self.cluster_script().await;
                Err(psbt::refused(&bytes, script.as_ref(), message))
            }
            other => Err(unexpected_reply(&other)),
        }
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/transactions/{id}",
    tag = "transactions",
    params(("id" = String, Path, description = "The transaction id (64 hex digits) from the submission")),
    responses(
        (status = 200, description = "Everything this node's database holds about the transaction", body = TransactionView),
        (status = 400, description = "`invalid_request`: not a transaction id", body = ErrorBody),
        (status = 401, description = "No valid operator token", body = ErrorBody),
        (status = 404, description = "`not_found`: this node never accepted it", body = ErrorBody),
        (status = 503, description = "`unavailable`: no database attached", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn get_transaction(
    State(inner): Shared,
    Path(id): Path<String>,
) -> Result<Json<TransactionView>, ApiError> {
    let tx = parse_tx_id(&id)?;
    let store = inner.store()?;
    match store.transaction(tx).await {
        Ok(Some(found)) => Ok(Json(transaction_view(found, inner.state.control.health().bitcoin_tip))),
        Ok(None) => Err(ApiError::not_found(format!("no transaction {id} at this node"))),
        Err(e) => {
            tracing::error!(tx_id = %tx.short(), error = %e, "reading a transaction failed");
            Err(ApiError::internal("the database could not be read; the node's log says why"))
        }
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/transactions",
    tag = "transactions",
    params(ListQuery),
    responses(
        (status = 200, description = "One page of transactions, newest first", body = TransactionList),
        (status = 400, description = "`invalid_request`: unknown state or bad paging", body = ErrorBody),
        (status = 401, description = "No valid operator token", body = ErrorBody),
        (status = 503, description = "`unavailable`: no database attached", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn list_transactions(
    State(inner): Shared,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<TransactionList>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid_request(format!("bad query: {}", e.body_text())))?;
    let state = match query.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(s.parse::<TxStateKind>().map_err(|e| ApiError::invalid_request(e.to_string()))?),
    };
    let offset = query.offset.unwrap_or(0);
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid_request(format!("limit must be 1..={MAX_PAGE}, not {limit}")));
    }
    let store = inner.store()?;
    match store.transactions(state, offset, limit).await {
        Ok((page, total)) => Ok(Json(TransactionList {
            total,
            offset,
            limit,
            transactions: page.into_iter().map(summary_view).collect(),
        })),
        Err(e) => {
            tracing::error!(error = %e, "listing transactions failed");
            Err(ApiError::internal("the database could not be read; the node's log says why"))
        }
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/health",
    tag = "node",
    description = "No token needed. 200 when the probe passes, 503 (with the same body) when it does not.",
    params(HealthQuery),
    responses(
        (status = 200, description = "The probe passes", body = HealthView),
        (status = 503, description = "Not live, or not ready: `reasons` says why", body = HealthView),
        (status = 400, description = "`invalid_request`: unknown probe", body = ErrorBody),
    )
)]
pub(super) async fn health(State(inner): Shared, query: Result<Query<HealthQuery>, QueryRejection>) -> Response {
    let probe = match query {
        Ok(Query(q)) => q.probe.unwrap_or_else(|| "ready".into()),
        Err(e) => return ApiError::invalid_request(format!("bad query: {}", e.body_text())).into_response(),
    };
    let h = inner.state.control.health();
    let reasons = h.not_ready_reasons(usize::from(inner.state.threshold));
    let (primes, primes_generating_seconds) = match h.primes {
        PrimesState::Ready => (PrimesStateName::Ready, None),
        PrimesState::Generating { seconds } => (PrimesStateName::Generating, Some(seconds)),
        PrimesState::Missing => (PrimesStateName::Missing, None),
    };
    let view = HealthView {
        node: inner.state.node.0,
        live: h.driver_running,
        ready: reasons.is_empty(),
        reasons,
        database: CheckView { ok: h.database.ok, reason: h.database.reason.clone() },
        etcd: CheckView { ok: h.etcd.ok, reason: h.etcd.reason.clone() },
        leader: h.leader,
        peers_connected: count(h.peers_connected),
        peers_total: count(h.peers_total),
        key_present: h.key_present,
        primes,
        primes_generating_seconds,
        pool_ready: count(h.pool_ready),
        pool_low_water: count(h.pool_low_water),
        bitcoin: h.bitcoin.as_ref().map(|c| CheckView { ok: c.ok, reason: c.reason.clone() }),
        degraded: h.degraded_reasons(),
        misbehaviour: inner
            .state
            .metrics
            .misbehaviour()
            .into_iter()
            .map(|(member, kind, count)| MisbehaviourView { member, kind: kind.to_string(), count })
            .collect(),
    };
    let passes = match probe.as_str() {
        "ready" => view.ready,
        "live" => view.live,
        other => {
            return ApiError::invalid_request(format!("unknown probe {other:?}: use ready or live")).into_response()
        }
    };
    let status = if passes { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(view)).into_response()
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "node",
    description = "Prometheus text format (version 0.0.4). No token needed.",
    responses((status = 200, description = "Every metric family", body = String, content_type = "text/plain"))
)]
pub(super) async fn metrics(State(inner): Shared) -> Response {
    let metrics = &inner.state.metrics;
    metrics.peers_connected(inner.state.control.health().peers_connected);
    match tokio::time::timeout(SCRAPE_STATUS_WAIT, inner.state.control.status()).await {
        Ok(Ok(report)) => metrics.status(&report),
        Ok(Err(e)) => tracing::debug!(error = %e, "scrape without a fresh status"),
        Err(_) => tracing::debug!("scrape without a fresh status: the core did not answer in time"),
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics.render()).into_response()
}

#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "node",
    description = "This document. No token needed.",
    responses((status = 200, description = "The OpenAPI 3 document", body = Object, content_type = "application/json"))
)]
pub(super) async fn openapi() -> Response {
    Json(super::openapi::document()).into_response()
}

/// The router's answer for a path it does not know.
pub(super) async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route {}", uri.path()))
}

fn unexpected_reply(reply: &Reply) -> ApiError {
    let kind = match reply {
        Reply::DkgStarted(_) => "DkgStarted",
        Reply::Submitted(_) => "Submitted",
        Reply::Status(_) => "Status",
    };
    tracing::error!(reply = kind, "the core answered a command with another command's reply");
    ApiError::internal("the core gave an unexpected answer")
}

/// How a refusal reads in the audit trail: its code and message (never a
/// secret: messages carry none).
fn refusal_outcome(e: &ApiError) -> String {
    match &e.detail.problem {
        Some(problem) => format!("refused: {} ({problem}): {}", e.detail.code, e.detail.message),
        None => format!("refused: {}: {}", e.detail.code, e.detail.message),
    }
}

fn parse_tx_id(id: &str) -> Result<TxId, ApiError> {
    let bad = || ApiError::invalid_request(format!("{id:?} is not a transaction id: expected 64 hex digits"));
    let bytes = hex::decode(id).map_err(|_| bad())?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
    Ok(TxId(bytes))
}

fn vote_view(vote: &SignedVote, own_at: Option<u64>) -> VoteView {
    let (decision, reject_reason) = match &vote.body.decision {
        Decision::Approve => (DecisionName::Approve, None),
        Decision::Reject(reason) => (DecisionName::Reject, Some(reason.clone())),
    };
    VoteView {
        voter: vote.body.voter.0,
        decision,
        reject_reason,
        signature_hex: hex::encode(vote.signature),
        own: own_at.is_some(),
        cast_at_ms: own_at,
    }
}

fn transaction_view(t: StoredTransaction, tip: Option<u64>) -> TransactionView {
    let (state, failure_reason) = state_name(&t.state);
    let confirmed = t.state == mpc_core::TxState::Confirmed;
    let chain = t.chain.as_ref();
    let block = chain.and_then(|c| c.block.as_ref());
    let signed_psbt = t.signed_raw_tx.as_ref().and_then(|raw| {
        let signed: bitcoin::Transaction = bitcoin::consensus::deserialize(raw).ok()?;
        match mpc_core::tx::signed_psbt(&t.psbt, &signed) {
            Ok(psbt) => Some(psbt),
            Err(e) => {
                // The core checked both before storing them: say so loudly.
                tracing::error!(tx = %t.tx.to_hex(), "the stored signed transaction does not finalize its PSBT: {e}");
                None
            }
        }
    });
    TransactionView {
        tx_id: t.tx.to_hex(),
        state,
        failure_reason,
        proposer: t.proposer.0,
        accepted_at_ms: t.accepted_at.0,
        psbt_base64: base64::engine::general_purpose::STANDARD.encode(&t.psbt),
        history: t
            .history
            .iter()
            .map(|c| {
                let (state, failure_reason) = state_name(&c.state);
                StateChangeView { state, failure_reason, at_ms: c.at.0, audit_seq: c.audit_seq }
            })
            .collect(),
        votes: t.votes.iter().map(|v| vote_view(&v.vote, v.own_at.map(|m| m.0))).collect(),
        equivocations: t
            .evidence
            .iter()
            .map(|e| EquivocationView {
                voter: e.voter.0,
                first: vote_view(&e.first, None),
                second: vote_view(&e.second, None),
            })
            .collect(),
        presignatures_consumed: t
            .consumed
            .iter()
            .map(|c| ConsumedPresignatureView {
                presignature_id: c.id.to_string(),
                input: c.input,
                message_hex: hex::encode(c.message),
                epoch: c.epoch,
            })
            .collect(),
        signed_tx_hex: t.signed_raw_tx.as_ref().map(hex::encode),
        txid: t.txid,
        signed_psbt_base64: signed_psbt.map(|p| base64::engine::general_purpose::STANDARD.encode(p)),
        confirmations: block.filter(|_| confirmed).and_then(|b| tip?.checked_sub(b.height).map(|d| d + 1)),
        block_hash: block.filter(|_| confirmed).map(|b| b.hash.clone()),
        block_height: block.filter(|_| confirmed).map(|b| b.height),
        broadcast_stalled: chain.and_then(|c| c.stalled.clone()),
    }
}

fn summary_view(s: TransactionSummary) -> TransactionSummaryView {
    let (state, failure_reason) = state_name(&s.state);
    TransactionSummaryView {
        tx_id: s.tx.to_hex(),
        state,
        failure_reason,
        proposer: s.proposer.0,
        accepted_at_ms: s.accepted_at.0,
        approve_votes: s.approve_votes,
        reject_votes: s.reject_votes,
        txid: s.txid,
    }
}
