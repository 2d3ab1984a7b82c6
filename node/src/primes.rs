//! Safe primes for aux info generation (DESIGN §3): the slow part of DKG,
//! about half a minute of one core per node, made ahead of time.
//!
//! A node gets them one of three ways: from its database (persisted sealed
//! after the first start), from a file made with `mpc-cli primes generate`
//! (`node.safe_primes_file`), or generated in the background on first start.
//! They are handed to the core as `Input::SafePrimes`, which persists them
//! (sealed at rest by the store) and uses them when DKG starts.
//!
//! Primes are secret (they are the Paillier key): files are written
//! owner-only and refused when others can read them. The TEST-ONLY fixture
//! files in `sim/fixtures` (a map from node id to primes, public by
//! construction) are accepted on regtest only, so no real cluster can run on
//! primes that are published in a repository.

use mpc_core::engine::SafePrimes;
use mpc_core::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The format tag of files `mpc-cli primes generate` writes.
pub const FORMAT: &str = "mpc-custody/safe-primes/v1";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrimesFile {
    format: String,
    primes: SafePrimes,
}

/// Generates fresh safe primes from the OS's randomness (tens of seconds).
pub fn generate() -> SafePrimes {
    SafePrimes::generate(&mut rand_core::OsRng)
}

/// Writes `primes` to `path` owner-only, replacing it atomically.
pub fn write(path: &Path, primes: &SafePrimes) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let text = serde_json::to_vec(&PrimesFile { format: FORMAT.into(), primes: primes.clone() })?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(&text)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Loads this node's primes from `path` (see the module docs for the two
/// formats). Errors name the file and the problem, never the primes.
pub fn load(path: &Path, me: NodeId, network: bitcoin::Network) -> Result<SafePrimes, String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let text = std::fs::read(path).map_err(|e| format!("{shown}: {e}"))?;
    let primes = if let Ok(file) = serde_json::from_slice::<PrimesFile>(&text) {
        if file.format != FORMAT {
            return Err(format!("{shown}: format {:?}, expected {FORMAT:?}", file.format));
        }
        let mode = std::fs::metadata(path).map_err(|e| format!("{shown}: {e}"))?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!("{shown} holds secret primes but is readable by others (mode {mode:o}); chmod 600 it"));
        }
        file.primes
    } else if let Ok(mut fixture) = serde_json::from_slice::<BTreeMap<NodeId, SafePrimes>>(&text) {
        if network != bitcoin::Network::Regtest {
            return Err(format!(
                "{shown} is a TEST-ONLY fixture of public primes; it is accepted on regtest only, not on {network}"
            ));
        }
        tracing::warn!(file = %shown, "using TEST-ONLY fixture primes: public, never for real funds");
        fixture.remove(&me).ok_or_else(|| format!("{shown}: the fixture has no primes for {me}"))?
    } else {
        return Err(format!("{shown}: not a safe-primes file (expected {FORMAT} from `mpc-cli primes generate`)"));
    };
    // Sizes as the security level requires (serde does not check them).
    SafePrimes::try_from(primes.into_primes()).map_err(|_| format!("{shown}: primes of the wrong size for this build"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn fixture_path() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../sim/fixtures/test-only-safe-primes-5.json")
    }

    #[test]
    fn fixture_primes_load_on_regtest_only() {
        let p = load(&fixture_path(), NodeId(3), bitcoin::Network::Regtest).expect("fixture loads on regtest");
        let err = load(&fixture_path(), NodeId(3), bitcoin::Network::Bitcoin).err().expect("refused on mainnet");
        assert!(err.contains("TEST-ONLY"), "{err}");
        let err = load(&fixture_path(), NodeId(9), bitcoin::Network::Regtest).err().expect("no node 9");
        assert!(err.contains("node-9"), "{err}");

        // Round trip through the generated-file format, owner-only.
        let dir = std::env::temp_dir().join(format!("mpc-primes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("node-3.json");
        write(&file, &p).unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        let back = load(&file, NodeId(3), bitcoin::Network::Bitcoin).expect("own file loads anywhere");
        assert_eq!(back.primes_ref(), p.primes_ref());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load(&file, NodeId(3), bitcoin::Network::Bitcoin).err().expect("world-readable refused");
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::write(&file, b"{\"format\":\"x\"}").unwrap();
        let err = load(&file, NodeId(3), bitcoin::Network::Regtest).err().expect("garbage refused");
        assert!(err.contains("not a safe-primes file"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
