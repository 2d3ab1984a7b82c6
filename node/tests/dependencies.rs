//! DESIGN §1: the production binaries link no simulator, no turmoil, no
//! fixtures and no proptest. `cargo tree` of mpc-node's normal (non-dev,
//! non-build) dependencies must name none of them.

use std::process::Command;

const FORBIDDEN: &[&str] = &["mpc-sim", "turmoil", "proptest"];

/// `cargo tree -p PACKAGE -e normal`, one package per line.
fn normal_dependencies(package: &str) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let out = Command::new(cargo)
        .args(["tree", "--offline", "--locked", "--manifest-path", manifest, "-p", package, "-e", "normal"])
        .args(["--prefix", "none", "--format", "{p}"])
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn the_node_links_no_simulator_turmoil_or_proptest() {
    let tree = normal_dependencies("mpc-node");
    assert!(tree.lines().any(|l| l.starts_with("mpc-core ")), "cargo tree printed no mpc-core:\n{tree}");
    let found: Vec<&str> = tree.lines().filter(|l| FORBIDDEN.iter().any(|f| l.split(' ').next() == Some(*f))).collect();
    assert!(found.is_empty(), "mpc-node's normal dependencies include {found:?}");
}

/// The check bites: the same filter finds the simulator in the tree of the
/// crate that does depend on it.
#[test]
fn the_same_check_finds_turmoil_where_it_is() {
    let tree = normal_dependencies("mpc-sim");
    assert!(tree.lines().any(|l| l.split(' ').next() == Some("turmoil")), "{tree}");
}
