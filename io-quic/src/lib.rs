//! mpc-io-quic: QUIC with mutual TLS between cluster nodes (quinn, rustls,
//! rcgen). It carries `mpc_core::PeerMessage`s and reports each message's
//! sender as the node id from the peer's certificate; it depends on the
//! core's message types only.
//!
//! Landed so far: [`certs`], the cluster CA and node certificates (node id
//! in the SAN), as `mpc-cli certs init|issue` uses them; [`frame`], the
//! versioned, length-prefixed, size-limited envelope framing.

pub mod certs;
pub mod frame;

pub use mpc_core::PeerMessage;
