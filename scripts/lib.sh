# Shared shell helpers for scripts/*.sh (sourced, not run).
log() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Which wasm32-wasip1 route works on this machine:
#   rustup  - rustup's toolchain has the target's std;
#   debian  - Debian's rustc-web can build std for the target (-Z build-std);
#   none    - neither (run scripts/bootstrap.sh).
wasm_route() {
  if command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
    echo rustup
  elif [[ -x /usr/bin/rustc && -x /usr/bin/cargo && -d /usr/lib/wasm32-wasi && -d /usr/lib/rustlib/src/rust/library ]] \
       && { command -v rust-lld >/dev/null 2>&1 || ls /usr/lib/llvm-*/bin/lld >/dev/null 2>&1; }; then
    echo debian
  else
    echo none
  fi
}
