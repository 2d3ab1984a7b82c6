//! Talking to one node's API, and what can go wrong, as exit codes.

use mpc_core::error_text::with_sources;
use mpc_node::api::types::{ErrorBody, HealthView};
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Why a command failed; each kind is one exit code (see the crate docs).
#[derive(Debug)]
pub enum CliError {
    /// Bad arguments or a bad cluster file: exit 2.
    Usage(String),
    /// A local file cannot be read or is not what it should be: exit 2.
    Local(String),
    /// The node does not know what was asked for (404): exit 3.
    NotFound(String),
    /// The node refused the request (4xx other than 404): exit 4.
    Refused { node: u16, status: u16, code: String, message: String },
    /// The node cannot be reached or is unavailable (503): exit 5.
    Unavailable(String),
    /// `tx wait` ended in a state other than signed: exit 6.
    WaitEnded(String),
    /// Anything else: an error talking to the node, an unexpected answer,
    /// a disagreement between nodes: exit 1.
    Failed(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Failed(_) => 1,
            CliError::Usage(_) | CliError::Local(_) => 2,
            CliError::NotFound(_) => 3,
            CliError::Refused { .. } => 4,
            CliError::Unavailable(_) => 5,
            CliError::WaitEnded(_) => 6,
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Usage(m) | CliError::Local(m) | CliError::Failed(m) => f.write_str(m),
            CliError::NotFound(m) | CliError::Unavailable(m) | CliError::WaitEnded(m) => f.write_str(m),
            CliError::Refused { node, status, code, message } => {
                write!(f, "node {node} refused ({status} {code}): {message}")
            }
        }
    }
}

/// The API of one node.
pub struct NodeClient {
    pub id: u16,
    pub base: String,
    token: Option<String>,
    http: Client,
}

/// Never prints the token.
impl std::fmt::Debug for NodeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeClient(node {} at {})", self.id, self.base)
    }
}

/// Longer than the node's own wait for its core (30 s), so the node's
/// answer, even a timeout, arrives before the client gives up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(45);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl NodeClient {
    pub fn new(id: u16, base: &str, token: Option<String>) -> Result<NodeClient, CliError> {
        let http = Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| CliError::Failed(format!("cannot make an HTTP client: {e}")))?;
        Ok(NodeClient { id, base: base.trim_end_matches('/').to_string(), token, http })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn authed(&self, request: RequestBuilder) -> Result<RequestBuilder, CliError> {
        match &self.token {
            Some(token) => Ok(request.bearer_auth(token)),
            None => Err(CliError::Usage(
                "no operator token: set token_file in the cluster file, --token-file or MPC_TOKEN".into(),
            )),
        }
    }

    fn send(&self, request: RequestBuilder) -> Result<Response, CliError> {
        request.send().map_err(|e| {
            if e.is_connect() || e.is_timeout() {
                CliError::Unavailable(format!("node {} at {} is unavailable: {}", self.id, self.base, with_sources(&e)))
            } else {
                CliError::Failed(format!("talking to node {} at {}: {}", self.id, self.base, with_sources(&e)))
            }
        })
    }

    /// A successful answer as `T`, or the node's error as a [`CliError`].
    fn answer<T: DeserializeOwned>(&self, response: Response) -> Result<T, CliError> {
        let status = response.status();
        let text = response
            .text()
            .map_err(|e| CliError::Failed(format!("reading node {}'s answer: {}", self.id, with_sources(&e))))?;
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|e| {
                CliError::Failed(format!("node {} gave an unexpected answer ({status}): {e}: {}", self.id, clip(&text)))
            });
        }
        Err(self.refusal(status, &text))
    }

    fn refusal(&self, status: StatusCode, text: &str) -> CliError {
        let (code, message) = match serde_json::from_str::<ErrorBody>(text) {
            Ok(body) => {
                let mut message = body.error.message;
                if let Some(problem) = body.error.problem {
                    message = format!("{message} [{problem}]");
                }
                (body.error.code, message)
            }
            Err(_) => ("unknown".to_string(), clip(text)),
        };
        let node = self.id;
        match status {
            StatusCode::NOT_FOUND => CliError::NotFound(format!("node {node}: {message}")),
            StatusCode::SERVICE_UNAVAILABLE => {
                CliError::Unavailable(format!("node {node} is unavailable ({code}): {message}"))
            }
            s if s.is_client_error() => CliError::Refused { node, status: s.as_u16(), code, message },
            s => CliError::Failed(format!("node {node} failed ({} {code}): {message}", s.as_u16())),
        }
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        let request = self.authed(self.http.get(self.url(path)))?;
        let response = self.send(request)?;
        self.answer(response)
    }

    pub fn post_empty<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        let request = self.authed(self.http.post(self.url(path)))?;
        let response = self.send(request)?;
        self.answer(response)
    }

    pub fn post_bytes<T: DeserializeOwned>(&self, path: &str, body: Vec<u8>) -> Result<T, CliError> {
        let request =
            self.authed(self.http.post(self.url(path)).header("content-type", "application/octet-stream").body(body))?;
        let response = self.send(request)?;
        self.answer(response)
    }

    /// The node's health: its body comes with 200 (ready) and with 503 (not
    /// ready) alike. Needs no token.
    pub fn health(&self) -> Result<HealthView, CliError> {
        let response = self.send(self.http.get(self.url("/api/v1/health")))?;
        let status = response.status();
        let text = response
            .text()
            .map_err(|e| CliError::Failed(format!("reading node {}'s health: {}", self.id, with_sources(&e))))?;
        if status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE {
            if let Ok(health) = serde_json::from_str::<HealthView>(&text) {
                return Ok(health);
            }
        }
        Err(self.refusal(status, &text))
    }
}

fn clip(text: &str) -> String {
    let t = text.trim();
    match t.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_failure_has_its_exit_code() {
        let refused = CliError::Refused { node: 1, status: 409, code: "no_key".into(), message: "m".into() };
        let codes: Vec<u8> = [
            CliError::Failed("x".into()),
            CliError::Usage("x".into()),
            CliError::Local("x".into()),
            CliError::NotFound("x".into()),
            refused,
            CliError::Unavailable("x".into()),
            CliError::WaitEnded("x".into()),
        ]
        .iter()
        .map(CliError::exit_code)
        .collect();
        assert_eq!(codes, [1, 2, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn node_errors_map_to_exit_codes_by_status() {
        let c = NodeClient::new(2, "http://127.0.0.1:1/", None).unwrap();
        assert_eq!(c.base, "http://127.0.0.1:1");
        let body = r#"{"error":{"code":"invalid_psbt","message":"cut off","problem":"truncated"}}"#;
        let e = c.refusal(StatusCode::BAD_REQUEST, body);
        assert_eq!(e.exit_code(), 4);
        assert!(e.to_string().contains("invalid_psbt") && e.to_string().contains("[truncated]"), "{e}");
        assert_eq!(c.refusal(StatusCode::NOT_FOUND, "{}").exit_code(), 3);
        assert_eq!(c.refusal(StatusCode::SERVICE_UNAVAILABLE, "busy").exit_code(), 5);
        assert_eq!(c.refusal(StatusCode::INTERNAL_SERVER_ERROR, "oops").exit_code(), 1);
        assert_eq!(c.refusal(StatusCode::GATEWAY_TIMEOUT, "").exit_code(), 1);
    }
}
