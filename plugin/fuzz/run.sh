#!/usr/bin/env bash
# Run every fuzz target for a bounded time on the stable toolchain.
#
#   plugin/fuzz/run.sh [SECONDS_PER_TARGET]   (default 30)
#
# Installs cargo-fuzz (pinned) if it is missing. Uses `-s none`: the
# sanitizers need nightly, the coverage-guided fuzzing does not. Corpora and
# crash artifacts stay under plugin/fuzz/{corpus,artifacts} (git-ignored).
set -euo pipefail
secs=${1:-30}
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "run.sh: installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz --version 0.13.2 -j2
fi

targets=$(cargo fuzz list --fuzz-dir "$here")
for t in $targets; do
    mkdir -p "corpus/$t"
    echo "==> fuzzing $t for ${secs}s"
    cargo fuzz run --fuzz-dir "$here" -s none "$t" "corpus/$t" -- \
        -max_total_time="$secs" -max_len=4096 -timeout=10 -print_final_stats=1
done
