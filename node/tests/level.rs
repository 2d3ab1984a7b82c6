//! The node binary never runs at mpc-core's TEST-ONLY reduced security
//! level: a build that unified `reduced-security-test-only` in refuses to
//! start. Exercise the refusal with
//! `cargo test -p mpc-node --features mpc-sim/reduced-security --test level`.

use std::process::Command;

#[test]
fn binary_refuses_to_start_at_the_reduced_level() {
    let out = Command::new(env!("CARGO_BIN_EXE_mpc-node")).arg("--version").output().expect("run mpc-node");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if mpc_core::REDUCED_SECURITY_TEST_ONLY {
        assert!(!out.status.success(), "a reduced-level binary started");
        assert!(stderr.contains("reduced-security-test-only"), "unclear refusal: {stderr}");
    } else {
        assert!(out.status.success(), "production binary failed: {stderr}");
    }
}
