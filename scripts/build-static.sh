#!/usr/bin/env bash
# The shipped pam-lite: the `dist` profile (fat LTO, one codegen unit, panic = abort), statically linked
# against glibc (`+crt-static`; no musl toolchain is needed), without the `demo` feature (the embedded
# emulator behind `--demo` / `pam-lite emulator` is demonstration and test code). `--target` is explicit so the flag reaches
# only the target binaries, not build scripts and proc-macros (which cannot be static).
#
#   scripts/build-static.sh [extra cargo args, e.g. -p pam-lite-bench]
#   -> target/x86_64-unknown-linux-gnu/dist/pam-lite
#
# glibc caveat: a static glibc binary resolves host names through NSS modules loaded at run time, so
# getaddrinfo needs the same glibc version's NSS libraries on the host (true for the host it was built
# on; /etc/hosts and DNS work through the built-in "files" and "dns" modules).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${TARGET:-x86_64-unknown-linux-gnu}
export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static"
exec cargo build --locked --profile dist --target "$TARGET" -p pam-lite --no-default-features "$@"
