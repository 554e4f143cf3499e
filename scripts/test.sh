#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script).
# Needs only the Rust toolchain; everything else is fetched by cargo from crates.io.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

step() { printf '\n=== %s ===\n' "$*"; }

# The vendored suites and the fuzz check are their own workspaces, built once and never edited in a CI run:
# no incremental cache and no debug info beyond line tables (the same reason as [profile.dev] in
# Cargo.toml: disk, a cold CI run once ran out of it).
side() { CARGO_INCREMENTAL=0 CARGO_PROFILE_DEV_DEBUG=line-tables-only "$@"; }

step "format"
cargo fmt --all -- --check

step "clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "core purity (no sockets, threads, clocks, sleeps or ambient randomness in core/)"
if grep -rnE 'std::net|std::thread|Instant::now|SystemTime::now|thread::sleep|thread_rng|OsRng|getrandom' core/src \
    | grep -vE '^\S+:\s*//'; then
  echo "core/ must stay pure" >&2
  exit 1
fi

# Real OpenSSH for cli/tests/ssh_proxy.rs (issue 10: ssh/scp through `pam-lite tunnel --stdio`). Installed
# with apt-get when missing (idempotent, skipped when present); PAM_LITE_REQUIRE_SSH=1 then makes a missing
# program a test failure instead of a SKIPPED line. PAM_LITE_SKIP_SSH=1 skips (and says so).
if [ "${PAM_LITE_SKIP_SSH:-0}" = 1 ]; then
  echo "SKIPPED ssh/scp through the tunnel: PAM_LITE_SKIP_SSH=1"
else
  step "openssh for the ssh/scp tests (apt-get only when missing)"
  scripts/ensure-openssh.sh
  export PAM_LITE_REQUIRE_SSH=1
fi

step "tests (unit, simulation, properties, snapshots, drivers, CLI incl. ssh/scp through the tunnel)"
cargo test --workspace --locked

# The patched sctp-proto the workspace builds with ([patch.crates-io] in Cargo.toml): its own suite, with
# its own Cargo.lock (it is not a workspace member).
step "vendored sctp-proto (vendor/sctp-proto-fixed) test suite"
side cargo test --locked --manifest-path vendor/sctp-proto-fixed/Cargo.toml

# str0m's ICE agent, patched (a controlled agent follows the latest nomination: NAT rebinding, issue 14):
# its own suite (vendor/is-fixed/PATCHES.md).
step "vendored is (vendor/is-fixed) test suite"
side cargo test --locked --manifest-path vendor/is-fixed/Cargo.toml

# The patched str0m (Channel::set_read_paused, receive-side backpressure): its lib tests and data-channel
# tests, run against the sctp-proto fork above (vendor/str0m-fixed/patches/README.md).
step "vendored str0m (vendor/str0m-fixed) test suite"
side cargo test --locked --manifest-path vendor/str0m-fixed/Cargo.toml --lib --tests

# str0m's aws-lc-rs backend, patched (one dimpl config per process instead of one per Rtc: launch CPU,
# issue 11; vendor/str0m-aws-lc-rs-fixed/PATCHES.md). Built in str0m-fixed's target directory, which
# already holds the same aws-lc-sys, so the suite costs seconds instead of another aws-lc build.
step "vendored str0m-aws-lc-rs (vendor/str0m-aws-lc-rs-fixed) test suite"
CARGO_TARGET_DIR=vendor/str0m-fixed/target \
    side cargo test --locked --manifest-path vendor/str0m-aws-lc-rs-fixed/Cargo.toml

# The fuzz targets are their own workspace (cargo-fuzz builds them with its own flags); their bodies run as
# replay/property tests above, and this proves the targets themselves still build (a separate workspace
# does not inherit the root's [patch], which once broke them unnoticed). Needs no nightly and no cargo-fuzz.
step "fuzz targets build (fuzz/, cargo check)"
side cargo check --locked --manifest-path fuzz/Cargo.toml --bins

# ---------------------------------------------------------------------------------------------------------
# Keeper interop (issue 5): a Python venv with Keeper's own tube library and Commander (pinned, from PyPI),
# then tests/tests/keeper_interop.rs inside a private network namespace. Bounded (~2 min here, hard cap
# 270 s). The same test in the workspace step above only printed SKIPPED (it needs the namespace).
step "keeper interop (keeper-pam-webrtc-rs 2.2.9 + keepercommander 18.1.8, private netns)"
tests/interop/run.sh

# ---------------------------------------------------------------------------------------------------------
# The ticket exporter (issue 10): its own venv with keepercommander 18.1.8, Commander's own objects as
# fixtures (no Keeper server), the ticket compared with Commander's own `pam launch` offer field by field,
# and checked by the pam-lite binary the test step above built. ~1 min (venv cached after the first run).
step "ticket exporter (keepercommander 18.1.8 as a library, fixtures)"
PAM_LITE_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/pam-lite" PAM_LITE_REQUIRE_BIN=1 exporter/run_tests.sh

# The NAT lab (issue 9): network namespaces, kernel NAT (nftables) and a real TURN server (coturn), all
# inside a private namespace made by the script; one PASS/FAIL line per scenario (~30 s).
step "NAT lab (tests/netlab/run.sh)"
tests/netlab/run.sh
