//! The core is a pure state machine: no sockets, threads, clock reads, sleeps or ambient randomness, and no
//! runtime or I/O crates among its dependencies. This test reads `core/`'s sources and manifest and fails on
//! any line that breaks the rule (comments excepted), naming the file and line.

use std::path::{Path, PathBuf};

const FORBIDDEN: &[&str] = &[
    // Even the address types come from `core::net`: nothing in core/ reaches for std's network module.
    "std::net",
    "UdpSocket",
    "TcpStream",
    "TcpListener",
    "std::thread",
    "thread::spawn",
    "thread::sleep",
    "Instant::now",
    "SystemTime::now",
    "UNIX_EPOCH",
    "thread_rng",
    "rand::rng(",
    "OsRng",
    "getrandom",
    "fastrand::",
    "std::fs",
    "std::env",
    "std::process",
];

/// What test code in core/ may use to read fixtures (never what the core itself runs).
const TEST_FIXTURE_IO: &[&str] = &["std::fs", "std::env"];

/// Files whose module is declared `#[cfg(test)] mod name;` (test-only modules).
fn test_only_modules(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        let dir = match file.file_name().and_then(|n| n.to_str()) {
            Some("mod.rs") | Some("lib.rs") => file.parent().map(Path::to_path_buf),
            _ => file
                .parent()
                .map(|p| p.join(file.file_stem().unwrap_or_default())),
        };
        let Some(dir) = dir else { continue };
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.windows(2) {
            if pair[0].trim() != "#[cfg(test)]" {
                continue;
            }
            let Some(name) = pair[1]
                .trim()
                .strip_prefix("mod ")
                .and_then(|r| r.strip_suffix(';'))
            else {
                continue;
            };
            out.push(dir.join(format!("{name}.rs")));
            out.push(dir.join(name).join("mod.rs"));
        }
    }
    out
}

const FORBIDDEN_DEPS: &[&str] = &[
    "tokio",
    "smol",
    "async-io",
    "mio",
    "ureq",
    "tungstenite",
    "hyper",
    "getrandom",
    "fastrand",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

fn core_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../core")
}

#[test]
fn core_sources_have_no_io_clock_sleep_or_ambient_randomness() {
    let mut files = Vec::new();
    rust_files(&core_dir().join("src"), &mut files);
    assert!(
        files.len() > 10,
        "core/src not found or nearly empty: {files:?}"
    );
    let test_only_files = test_only_modules(&files);
    let mut violations = Vec::new();
    for file in &files {
        let text =
            std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut in_tests = test_only_files.contains(file);
        let mut previous = "";
        for (n, line) in text.lines().enumerate() {
            // A trailing `#[cfg(test)] mod tests {` block is test code to the end of the file.
            if previous.trim() == "#[cfg(test)]" && line.trim_start().starts_with("mod tests {") {
                in_tests = true;
            }
            previous = line;
            let code = line.split("//").next().unwrap_or("");
            for pattern in FORBIDDEN {
                // Tests may read their fixtures (the fuzz corpora) and an environment override; the
                // rest (sockets, threads, clocks, sleeps, randomness) is forbidden in test code too.
                if in_tests && TEST_FIXTURE_IO.contains(pattern) {
                    continue;
                }
                if code.contains(pattern) {
                    violations.push(format!(
                        "{}:{}: {pattern}: {}",
                        file.display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "core/ must stay pure:\n{}",
        violations.join("\n")
    );
}

#[test]
fn core_depends_on_no_runtime_or_io_crate() {
    let manifest = std::fs::read_to_string(core_dir().join("Cargo.toml"))
        .unwrap_or_else(|e| panic!("core/Cargo.toml: {e}"));
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .unwrap_or("");
    for dep in FORBIDDEN_DEPS {
        let declared = deps.lines().any(|l| {
            l.trim_start().starts_with(&format!("{dep} "))
                || l.trim_start().starts_with(&format!("{dep}="))
                || l.trim_start().starts_with(&format!("{dep}."))
        });
        assert!(!declared, "core/ must not depend on {dep}");
    }
}
