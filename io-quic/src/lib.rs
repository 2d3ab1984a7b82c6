//! mpc-io-quic: QUIC with mutual TLS between cluster nodes (quinn, rustls,
//! rcgen). It carries `mpc_core::PeerMessage`s and reports each message's
//! sender as the node id from the peer's certificate. Filled by the
//! transport issue; it depends on the core's message types only.

pub use mpc_core::PeerMessage;
