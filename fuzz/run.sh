#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each and prints each target's exec
# count. Usage: fuzz/run.sh SECONDS   (CI calls it with a short time)
#
# cargo-fuzz needs nightly-only flags (-Zsanitizer=address); only stable is
# installed here, and RUSTC_BOOTSTRAP=1 lets stable accept them. New inputs
# go to a scratch corpus, so the committed seeds stay as generated; a crash
# leaves its input in fuzz/artifacts/TARGET/ and fails the script.
set -eu
seconds=${1:?usage: fuzz/run.sh SECONDS}
cd "$(dirname "$0")"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# One target per core: a libFuzzer run uses one. All built first (cargo
# builds them in parallel), so two runs never build at once.
cargo fuzz build >"$scratch/build.log" 2>&1 || { tail -n 40 "$scratch/build.log" >&2; exit 1; }
run_target() {
    target=$1
    mkdir -p "$scratch/$target" "corpus/$target"
    log="$scratch/$target.log"
    if cargo fuzz run "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result=FAILED
        tail -n 40 "$log" >&2
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    echo "$target: ${execs:-?} execs in ${seconds} s: $result" | tee "$scratch/$target.result"
}
targets=$(cargo fuzz list)
for target in $targets; do
    # At most two at a time: wait for one to end before starting a third.
    while [ "$(jobs -pr | wc -l)" -ge 2 ]; do sleep 1; done
    run_target "$target" &
done
wait
status=0
for target in $targets; do
    grep -q ": ok$" "$scratch/$target.result" 2>/dev/null || status=1
done
exit $status
