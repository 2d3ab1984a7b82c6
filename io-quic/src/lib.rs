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

pub mod certs;
pub mod frame;
pub mod tls;
pub mod transport;

pub use transport::{Inbound, SendError, Transport, TransportConfig, TransportError};

pub use mpc_core::PeerMessage;
