#!/usr/bin/env bash
# Runs every fuzz target for a bounded time and fails on any crash.
#
#   bash fuzz/run-ci.sh                  # each target for 60 s
#   FUZZ_SECONDS=600 bash fuzz/run-ci.sh # longer
#   bash fuzz/run-ci.sh procfile         # only the named target(s)
#
# Each run starts from a scratch copy of the committed seed corpus plus the
# regression inputs (under fuzz/target/, which git ignores), so the committed
# corpus does not grow. A crash input lands in fuzz/artifacts/<target>/; see
# fuzz/README.md for turning it into a regression case.
set -euo pipefail

cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(lines framing json procfile options)
fi

# cargo-fuzz from crates.io if missing.
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# cargo-fuzz needs a nightly compiler. Use the nightly toolchain when it is
# installed; otherwise let the stable one accept nightly flags.
if rustup run nightly rustc --version >/dev/null 2>&1; then
    fuzz=(cargo +nightly fuzz)
else
    echo "fuzz: no nightly toolchain; using stable with RUSTC_BOOTSTRAP=1"
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
fi
"${fuzz[@]}" --version

# Build every target up front, so the timed runs measure fuzzing only.
"${fuzz[@]}" build

scratch=fuzz/target/ci-corpus
summary=()
failed=0
for t in "${targets[@]}"; do
    corpus=$scratch/$t
    rm -rf "$corpus"
    mkdir -p "$corpus"
    for dir in fuzz/corpus/$t fuzz/regressions/$t; do
        for f in "$dir"/*; do
            [ -f "$f" ] || continue
            case $(basename "$f") in README*) continue ;; esac
            cp "$f" "$corpus/"
        done
    done
    log=fuzz/target/ci-$t.log
    echo "fuzz: $t for ${seconds}s from $(ls "$corpus" | wc -l) inputs"
    status=0
    "${fuzz[@]}" run "$t" "$corpus" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1 || status=$?
    # libFuzzer's last status line: "#N DONE cov: X ft: Y corp: ... exec/s: Z ..."
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true)
    runs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$done_line")
    cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$done_line")
    ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$done_line")
    eps=$(sed -nE 's/.* exec\/s: ([0-9]+).*/\1/p' <<<"$done_line")
    if [ "$status" -ne 0 ] || [ -z "$done_line" ]; then
        failed=1
        echo "fuzz: $t FAILED (exit $status); the end of its log ($log):"
        tail -n 60 "$log"
        summary+=("$t: FAILED (see $log and fuzz/artifacts/$t/)")
    else
        summary+=("$t: ${runs} runs, ${eps} exec/s, cov ${cov}, ft ${ft}")
    fi
done

echo "fuzz summary (${seconds}s per target):"
for line in "${summary[@]}"; do
    echo "  $line"
done
if [ "$failed" -ne 0 ]; then
    echo "fuzz: a target crashed or failed a property"
    exit 1
fi
echo "fuzz: no crash"
