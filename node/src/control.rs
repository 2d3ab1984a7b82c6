//! The node's control plane: how the HTTP API reaches the core, and what
//! the shell tells the API about the node's health.
//!
//! Operator commands (start DKG, submit a PSBT, status) are inputs like any
//! other: the API queues a [`CommandRequest`] and the shell hands it to the
//! driver, so a command is handled between two steps and its reply comes
//! only after the step that produced it is durable. The queue is bounded:
//! when it is full the API answers 503 at once instead of piling requests
//! up in memory.

use mpc_core::{Command, Reply, StatusReport};
use serde::Serialize;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Commands waiting for the driver, at most.
pub const COMMAND_QUEUE: usize = 256;
/// How long the API waits for the core's answer before giving up (the
/// command may still be carried out; only the answer is lost).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// One operator command and where its reply goes.
pub struct CommandRequest {
    pub command: Command,
    pub reply: oneshot::Sender<Reply>,
}

/// Why a command got no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("the node is busy: {COMMAND_QUEUE} commands are already waiting; retry shortly")]
    Busy,
    #[error("the node is shutting down or restarting its core")]
    Unavailable,
    #[error("the core did not answer within {}s", REPLY_TIMEOUT.as_secs())]
    Timeout,
}

/// The API's handle on the node: cheap to clone.
#[derive(Clone)]
pub struct Control {
    commands: mpsc::Sender<CommandRequest>,
    health: watch::Receiver<Health>,
}

impl Control {
    /// A control plane: the API's handle, the shell's end of the command
    /// queue, and the sender through which the shell publishes health.
    pub fn new() -> (Control, mpsc::Receiver<CommandRequest>, watch::Sender<Health>) {
        let (commands, queue) = mpsc::channel(COMMAND_QUEUE);
        let (health_tx, health) = watch::channel(Health::starting());
        (Control { commands, health }, queue, health_tx)
    }

    /// Queues `command` and waits for the core's reply.
    pub async fn call(&self, command: Command) -> Result<Reply, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.commands.try_send(CommandRequest { command, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ControlError::Busy,
            mpsc::error::TrySendError::Closed(_) => ControlError::Unavailable,
        })?;
        match tokio::time::timeout(REPLY_TIMEOUT, answer).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(ControlError::Unavailable),
            Err(_) => Err(ControlError::Timeout),
        }
    }

    /// The core's status report.
    pub async fn status(&self) -> Result<StatusReport, ControlError> {
        match self.call(Command::Status).await? {
            Reply::Status(report) => Ok(*report),
            _ => Err(ControlError::Unavailable),
        }
    }

    /// The latest health the shell published.
    pub fn health(&self) -> Health {
        self.health.borrow().clone()
    }
}

/// One dependency's state, with the reason when it is not fine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Check {
    pub fn ok() -> Check {
        Check { ok: true, reason: None }
    }
    pub fn failing(reason: impl Into<String>) -> Check {
        Check { ok: false, reason: Some(reason.into()) }
    }
}

/// Where the node's safe primes stand (needed once, for aux info).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrimesState {
    /// Held (or aux info exists, which needs none).
    Ready,
    /// Being generated in the background since this many seconds.
    Generating { seconds: u64 },
    /// Not held and not being made (only while starting).
    Missing,
}

/// What the shell knows of the node's health, published after every step
/// and whenever a dependency changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Health {
    /// The driver is running (the process answers at all: live).
    pub driver_running: bool,
    /// The last persist succeeded.
    pub database: Check,
    /// etcd reachable and this node registered (leader-only work and
    /// signing need it).
    pub etcd: Check,
    pub leader: Option<u16>,
    pub peers_connected: usize,
    pub peers_total: usize,
    pub key_present: bool,
    pub primes: PrimesState,
    pub pool_ready: usize,
    pub pool_low_water: usize,
    /// The Bitcoin backend, when one is configured. Signing does not need
    /// it; broadcasting and following the chain do, so a failing one
    /// degrades the node without making it unready.
    pub bitcoin: Option<Check>,
    /// The height of bitcoind's best block at its last look.
    pub bitcoin_tip: Option<u64>,
}

impl Health {
    fn starting() -> Health {
        Health {
            driver_running: false,
            database: Check::failing("starting"),
            etcd: Check::failing("starting"),
            leader: None,
            peers_connected: 0,
            peers_total: 0,
            key_present: false,
            primes: PrimesState::Missing,
            pool_ready: 0,
            pool_low_water: 0,
            bitcoin: None,
            bitcoin_tip: None,
        }
    }

    /// What works less than it should while the node can still sign.
    pub fn degraded_reasons(&self) -> Vec<String> {
        match &self.bitcoin {
            Some(Check { ok: false, reason }) => {
                vec![format!("bitcoin backend: {}", reason.as_deref().unwrap_or("failing"))]
            }
            _ => Vec::new(),
        }
    }

    /// Ready to sign: every reason it is not, in words an operator can act on.
    pub fn not_ready_reasons(&self, threshold: usize) -> Vec<String> {
        let mut reasons = Vec::new();
        if !self.driver_running {
            reasons.push("the core is not running".to_string());
        }
        if let Some(r) = &self.database.reason {
            reasons.push(format!("database: {r}"));
        }
        if let Some(r) = &self.etcd.reason {
            reasons.push(format!("etcd: {r}"));
        }
        if self.peers_connected + 1 < threshold {
            reasons.push(format!(
                "only {} of {} peers connected; signing needs {} members",
                self.peers_connected, self.peers_total, threshold
            ));
        }
        if !self.key_present {
            reasons.push("no key yet: run DKG".to_string());
        } else if self.pool_ready == 0 {
            reasons.push("no presignature ready".to_string());
        }
        reasons
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready_node() -> Health {
        Health {
            driver_running: true,
            database: Check::ok(),
            etcd: Check::ok(),
            peers_connected: 4,
            peers_total: 4,
            key_present: true,
            primes: PrimesState::Ready,
            pool_ready: 3,
            ..Health::starting()
        }
    }

    #[test]
    fn a_failing_bitcoin_backend_degrades_the_node_but_leaves_it_ready_to_sign() {
        let mut h = ready_node();
        assert!(h.not_ready_reasons(3).is_empty() && h.degraded_reasons().is_empty(), "no backend configured");
        h.bitcoin = Some(Check::ok());
        assert!(h.degraded_reasons().is_empty());
        h.bitcoin = Some(Check::failing("bitcoind at http://127.0.0.1:1/ is unreachable: connection refused"));
        assert_eq!(
            h.degraded_reasons(),
            vec!["bitcoin backend: bitcoind at http://127.0.0.1:1/ is unreachable: connection refused".to_string()]
        );
        assert!(h.not_ready_reasons(3).is_empty(), "signing does not need the backend");
    }
}
