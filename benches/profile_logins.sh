#!/bin/bash
# A system-wide CPU profile (perf, cpu-clock sampling) of the login saturation phase of
# `cargo bench --bench load`: where the cores go besides argon2id. Needs `perf` (Debian's
# linux-perf) and permission to profile every process (root, or perf_event_paranoid <= -1).
#
#   bash benches/profile_logins.sh            # writes /tmp/perf.login and prints the summary
set -euo pipefail
cd "$(dirname "$0")/.."
out=${PERF_OUT:-/tmp/perf.login}
BENCH_WRITE=0 BENCH_SECONDS=14 cargo bench --bench load > /tmp/profile_logins_bench.log 2>&1 &
bench=$!
pid=""
while [ -z "$pid" ]; do
    sleep 0.2
    pid=$(pgrep -f "accounts serve" | head -1 || true)
done
hz=$(getconf CLK_TCK)
prev=$(awk '{print $14+$15}' "/proc/$pid/stat")
# Registrations, then the argon2 baseline (in the bench process, the service idle), then the
# login phase: the first half-second in which the service uses more than 0.6 of a core.
while true; do
    sleep 0.5
    cur=$(awk '{print $14+$15}' "/proc/$pid/stat")
    if [ $((cur - prev)) -gt $((hz * 6 / 10)) ]; then break; fi
    prev=$cur
done
sleep 1
perf record -a -e cpu-clock -F 499 -o "$out" -- sleep 8 2>/dev/null
wait "$bench"
echo "== share of all samples by process and object"
perf report -i "$out" --stdio --no-children --sort comm,dso 2>/dev/null | grep -v '^#' | grep -v '^$' | head -15
echo "== top symbols"
perf report -i "$out" --stdio --no-children --sort dso,sym 2>/dev/null | grep -v '^#' | grep -v '^$' | head -25
