#!/usr/bin/env bash
# Fuzzes every target in fuzz/ for a bounded time each (libFuzzer through
# cargo-fuzz, on a nightly toolchain), then prints executions and coverage
# per target and writes them to docs/fuzzing-results.md.
#
#   scripts/fuzz.sh [target ...]    FUZZ_SECONDS=60 per target by default
#   scripts/fuzz.sh corpus [target ...]
#                                   rewrite the seeds and minimize them, the
#                                   committed corpora and what runs found into
#                                   fuzz/corpus/ (cargo fuzz cmin)
#
# Installs what it uses if missing: the nightly toolchain (rustup), else falls
# back to the stable one with RUSTC_BOOTSTRAP=1; cargo-fuzz (crates.io, pinned).
# New inputs found while fuzzing go to fuzz/target/work/, not into the
# committed corpora; a crash is saved to fuzz/artifacts/<target>/ and fails
# the run (once fixed, keep the input in fuzz/regressions/<target>/).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

CARGO_FUZZ_VERSION=0.13.2
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
[[ "$FUZZ_SECONDS" =~ ^[0-9]+$ && "$FUZZ_SECONDS" -ge 1 ]] || die "FUZZ_SECONDS must be a positive number of seconds"
export CARGO_INCREMENTAL=0

# --- toolchain ------------------------------------------------------------------
toolchain_env=()
if rustup run nightly rustc --version >/dev/null 2>&1; then
  toolchain=nightly
elif timeout 600 rustup toolchain install nightly --profile minimal >/dev/null 2>&1; then
  log "installed the nightly toolchain (rustup)"
  toolchain=nightly
else
  log "no nightly toolchain could be had; using stable with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs -Z flags)"
  toolchain=stable
  toolchain_env=(RUSTC_BOOTSTRAP=1)
fi
rustc_version=$(rustup run "$toolchain" rustc --version)
log "toolchain: $rustc_version"

if ! command -v cargo-fuzz >/dev/null 2>&1 || ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION (crates.io)"
  cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION" || die "cargo install cargo-fuzz failed"
fi

# Inputs longer than this are not tried (the largest limit any parser has is
# PEM's 64 KiB; 20 KB reaches every token, header and document limit but it).
max_len=20000
all_targets=(token pem der metadata edge edge_config apiguard meshguard standalone)

# Features and target folder per target: only the standalone file needs the
# agent crate (its own folder, so that its long build locks no other target's).
features() {
  if [[ "$1" == standalone ]]; then echo "--features=libfuzzer --target-dir fuzz/target/agent"; else echo "--no-default-features --features=libfuzzer --target-dir fuzz/target"; fi
}

fuzz() { # fuzz <cargo-fuzz subcommand> <target> [args...]
  local sub=$1 t=$2; shift 2
  # shellcheck disable=SC2046
  env "${toolchain_env[@]}" cargo "+$toolchain" fuzz "$sub" --fuzz-dir fuzz $(features "$t") "$t" "$@"
}

if [[ "${1:-}" == corpus ]]; then
  shift
  targets=("$@")
  ((${#targets[@]})) || targets=("${all_targets[@]}")
  log "writing seeds to fuzz/seeds (fuzz/examples/write_seeds.rs)"
  rm -rf fuzz/seeds
  cargo run --quiet -p multicloud-fuzz --example write-seeds -- fuzz/seeds
  mkdir -p fuzz/target
  for t in "${targets[@]}"; do
    # Seeds, the committed corpus and what earlier runs found, minimized
    # together: only inputs that add coverage stay.
    mkdir -p "fuzz/corpus/$t" "fuzz/seeds/$t" "fuzz/target/work/$t"
    cp -n "fuzz/seeds/$t"/* "fuzz/target/work/$t"/* "fuzz/corpus/$t"/ 2>/dev/null || true
    fuzz cmin "$t" "fuzz/corpus/$t" -- -rss_limit_mb=2048 -timeout=10 -max_len=$max_len >"fuzz/target/cmin-$t.log" 2>&1 \
      || { tail -20 "fuzz/target/cmin-$t.log"; die "cmin of $t failed"; }
    log "$t: $(find "fuzz/corpus/$t" -type f | wc -l) inputs, $(du -sb "fuzz/corpus/$t" | cut -f1) bytes"
  done
  exit 0
fi

targets=("$@")
((${#targets[@]})) || targets=("${all_targets[@]}")
mkdir -p fuzz/target/work fuzz/artifacts
results=()
failed=()
for t in "${targets[@]}"; do
  [[ " ${all_targets[*]} " == *" $t "* ]] || die "no fuzz target $t (targets: ${all_targets[*]})"
  log "fuzzing $t for ${FUZZ_SECONDS}s"
  mkdir -p "fuzz/target/work/$t" "fuzz/artifacts/$t"
  logf="fuzz/target/fuzz-$t.log"
  # The first corpus folder receives new inputs; the committed one is read only.
  extra=()
  [[ -d "fuzz/regressions/$t" ]] && extra=("fuzz/regressions/$t")
  if ! fuzz run "$t" "fuzz/target/work/$t" "fuzz/corpus/$t" "${extra[@]}" -- \
      -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -max_len=$max_len \
      -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" >"$logf" 2>&1; then
    grep -E "panicked|ERROR|SUMMARY|Test unit written" "$logf" | head -20 >&2 || tail -30 "$logf" >&2
    failed+=("$t")
  fi
  # libFuzzer's last status line (`#N DONE cov: X ft: Y corp: ...`) and final stats.
  status=$(grep -E '^#[0-9]+' "$logf" | tail -1 || true)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logf" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logf" | tail -1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$logf" | tail -1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$status")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$status")
  corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9A-Za-z]*\).*/\1/p' <<<"$status")
  results+=("| \`$t\` | ${execs:-?} | ${rate:-?} | ${cov:-?} | ${ft:-?} | ${corp:-?} | ${rss:-?} MB |")
  log "$t: ${execs:-?} executions (${rate:-?}/s), cov ${cov:-?}, ft ${ft:-?}, corpus ${corp:-?}, peak RSS ${rss:-?} MB"
done

table=$(printf '%s\n' "| target | executions | per second | cov | ft | corpus (inputs/size) | peak RSS |" "|---|---|---|---|---|---|---|" "${results[@]}")
printf '\n%s\n\n' "$table"

if ((${#targets[@]} == ${#all_targets[@]})); then
  {
    echo "## Reliability: fuzzing"
    echo
    echo "Written by \`make fuzz\` (\`scripts/fuzz.sh\`; \`FUZZ_SECONDS=$FUZZ_SECONDS\` per target). Run: $(date -u '+%Y-%m-%d %H:%M UTC'), $rustc_version, cargo-fuzz $CARGO_FUZZ_VERSION, AddressSanitizer, $(nproc) cores shared with other builds. Each target starts from its committed corpus (\`fuzz/corpus/<target>\`); cov and ft are libFuzzer's coverage counters (edges, features) at the end of the run. What each target checks: [docs/testing.md](docs/testing.md#fuzzing)."
    echo
    echo "$table"
    echo
    if ((${#failed[@]})); then echo "Failed: ${failed[*]} (inputs in fuzz/artifacts/)."; else echo "No crash, hang (10 s per input) or out-of-memory (2 GB) in any target."; fi
  } > docs/fuzzing-results.md
  log "results written to docs/fuzzing-results.md"
fi

((${#failed[@]} == 0)) || die "fuzzing found failures in: ${failed[*]} (inputs in fuzz/artifacts/)"
