//! A blocking client of one node's HTTP API.

use serde_json::Value;
use std::time::Duration;

pub struct Api {
    base: String,
    token: String,
    client: reqwest::blocking::Client,
}

/// A response: status code and JSON body (`Value::Null` when not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Api {
    pub fn new(base: &str, token: &str) -> Api {
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
        Api { base: base.trim_end_matches('/').to_string(), token: token.trim().to_string(), client }
    }

    fn answer(r: reqwest::Result<reqwest::blocking::Response>) -> Option<Answer> {
        let r = r.ok()?;
        let status = r.status().as_u16();
        let text = r.text().ok()?;
        Some(Answer { status, body: serde_json::from_str(&text).unwrap_or(Value::String(text)) })
    }

    /// GET with the operator's token; `None` when the node does not answer.
    pub fn get(&self, path: &str) -> Option<Answer> {
        Self::answer(self.client.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send())
    }

    /// POST of a JSON body.
    pub fn post_json(&self, path: &str, body: &Value) -> Option<Answer> {
        Self::answer(self.client.post(format!("{}{path}", self.base)).bearer_auth(&self.token).json(body).send())
    }

    /// POST of raw bytes as `application/octet-stream`.
    pub fn post_bytes(&self, path: &str, body: Vec<u8>) -> Option<Answer> {
        Self::answer(
            self.client
                .post(format!("{}{path}", self.base))
                .bearer_auth(&self.token)
                .header("content-type", "application/octet-stream")
                .body(body)
                .send(),
        )
    }

    /// GET without a token (health, metrics).
    pub fn get_public(&self, path: &str) -> Option<(u16, String)> {
        let r = self.client.get(format!("{}{path}", self.base)).send().ok()?;
        Some((r.status().as_u16(), r.text().ok()?))
    }

    /// A raw request for bad-input tests.
    pub fn client(&self) -> &reqwest::blocking::Client {
        &self.client
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}
