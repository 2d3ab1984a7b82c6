//! mpc-io-quic: QUIC with mutual TLS between cluster nodes (quinn, rustls,
//! rcgen). It carries `mpc_core::PeerMessage`s and reports each message's
//! sender as the node id from the peer's certificate; it depends on the
//! core's message types only.
//!
//! Landed so far: [`certs`], the cluster CA and node certificates (node id
//! in the SAN), as `mpc-cli certs init|issue` uses them; [`frame`], the
//! versioned, length-prefixed, size-limited envelope framing; [`tls`],
//! mutual TLS from the cluster CA; [`transport`], the node's endpoint in
//! the full mesh.
//!
//! Using it: [`Transport::start`] returns the transport and its [`Inbox`];
//! `transport.send(to, msg)` never blocks, and `inbox.recv().await` yields
//! the next [`Inbound`] (a message or a refusal report), `None` once the
//! transport is shut down. What a peer can make this node hold is bounded
//! in bytes per member id (`TransportConfig::peer_inbound_bytes` of queued
//! messages plus `TransportConfig::receive_window` inside QUIC): a node
//! that stops taking messages stops reading from its peers instead of
//! growing (see [`transport`]).

pub mod certs;
pub mod frame;
pub mod tls;
pub mod transport;

pub use transport::{Inbound, Inbox, ResetSecret, SendError, Transport, TransportConfig, TransportError};

pub use mpc_core::PeerMessage;
