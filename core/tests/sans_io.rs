//! The core must stay sans-IO and deterministic (DESIGN §1-§2): no async
//! runtime, no wall clock, no OS randomness, no files, no sockets, and no
//! hash maps whose iteration order is random. This test fails the build's
//! test run if any of them creeps into `core/`.

use std::path::Path;

const FORBIDDEN_IN_SOURCE: &[&str] = &[
    "tokio",
    "Instant::now",
    "SystemTime",
    "OsRng",
    "thread_rng",
    "rand::random",
    "rand::rng(",
    "std::fs",
    "std::net",
    "std::process",
    "std::thread",
    "std::env",
    "HashMap",
    "HashSet",
];

const FORBIDDEN_DEPENDENCIES: &[&str] =
    &["tokio", "quinn", "sqlx", "etcd-client", "axum", "reqwest", "mio", "async-std", "getrandom"];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Lines of `text` (named `name`) whose code, comments stripped, holds a
/// forbidden name.
fn violations(name: &str, text: &str) -> Vec<String> {
    let mut hits = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        if FORBIDDEN_IN_SOURCE.iter().any(|bad| code.contains(bad)) {
            hits.push(format!("{name}:{}: {}", n + 1, line.trim()));
        }
    }
    hits
}

#[test]
fn core_source_uses_no_io_clock_or_ambient_randomness() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 5, "expected the core's source files, found {files:?}");
    let mut hits = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read source");
        hits.extend(violations(&file.display().to_string(), &text));
    }
    assert!(hits.is_empty(), "core/ must stay sans-IO and deterministic:\n{}", hits.join("\n"));
}

#[test]
fn core_manifest_names_no_io_crate() {
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let deps = manifest.split("[dependencies]").nth(1).expect("a [dependencies] table");
    let deps = deps.split("\n[").next().unwrap_or(deps);
    for line in deps.lines() {
        let name = line.split(['=', '.']).next().unwrap_or("").trim();
        assert!(!FORBIDDEN_DEPENDENCIES.contains(&name), "core depends on I/O crate {name}");
    }
}

/// The scan itself, on a planted source file: it names the offending line
/// of code and lets a comment that merely mentions a forbidden name pass.
#[test]
fn the_guard_itself_catches_a_planted_violation() {
    let planted =
        "fn clean() {}\n// Instant::now is never used here\nfn bad() { let t = std::time::Instant::now(); }\n";
    assert_eq!(
        violations("planted.rs", planted),
        vec!["planted.rs:3: fn bad() { let t = std::time::Instant::now(); }"]
    );
    let real = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/node.rs")).unwrap();
    assert!(violations("node.rs", &real).is_empty());
    let mut mutated = real.clone();
    mutated.push_str("\nfn ambient() -> u64 { rand::random() }\n");
    assert_eq!(violations("node.rs", &mutated).len(), 1, "a planted `rand::random` in node.rs went unseen");
}
