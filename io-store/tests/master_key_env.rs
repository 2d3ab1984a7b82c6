//! The master key read from the environment leaves it.
//!
//! A test binary of its own: setting a variable while other tests run on
//! other threads races with C code that reads the environment (SQLite's
//! temporary directory lookup, for one), which Rust's own lock around
//! `std::env` does not cover. Here the one test is the only thread.

use mpc_io_store::MasterKey;

#[test]
fn the_key_leaves_the_environment_once_read() {
    const VAR: &str = "MPC_SEALING_TEST_MASTER_KEY";
    let hex = MasterKey::generate_hex();
    std::env::set_var(VAR, hex.as_str());
    let key = MasterKey::from_env(VAR).expect("a key from the environment");
    assert!(std::env::var_os(VAR).is_none(), "{VAR} is still in the environment");
    // It is the key that was set, not merely some key.
    let same = MasterKey::from_hex(&hex, "the test's copy").unwrap();
    same.verify_key_check(&key.key_check()).expect("the key read is the key set");
    assert!(MasterKey::from_env(VAR).is_err(), "a second read finds nothing");
}
