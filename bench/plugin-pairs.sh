#!/usr/bin/env bash
# End-to-end throughput with the four shipped plugins against none, as pairs of compare.sh
# rows run back to back, and what the pairs say together.
#
#   bench/plugin-pairs.sh [RELAY_BINARY]      (default: $CARGO_TARGET_DIR/release/relay)
#
# One pair is one compare.sh run with SERVERS="relay relay+plugins": a fresh relay without
# plugins, then a fresh one with them, each sending COUNT messages of SIZE bytes over SESSIONS
# sessions. A single pair says little on a shared VM, whose speed drifts by 20-30% from one
# minute to the next; the script prints every pair's ratio (e2e with plugins / e2e without),
# then the median and mean of the ratios and the ratio of the two median rates.
#
# Environment: PAIRS (8), SIZE (bytes, 2048), SESSIONS (50), COUNT (messages per row, 40000),
# and what compare.sh reads (CARGO_TARGET_DIR, PLUGIN_CACHE, ...). Each compare.sh run stops
# what it started; this script only keeps their output, in a temp dir it removes on exit.
set -euo pipefail

PAIRS=${PAIRS:-8}
SIZE=${SIZE:-2048}
SESSIONS=${SESSIONS:-50}
COUNT=${COUNT:-40000}
HERE=$(dirname "$0")
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

# e2e_of FILE SERVER: the end-to-end msgs/s of SERVER's row in a compare.sh output.
e2e_of() {
    awk -v server="$2" '$1 == server && $3 == "KB" { print $7 }' "$1"
}

# median: the median of the numbers on standard input, one per line.
median() {
    sort -n | awk '{ v[NR] = $1 } END { if (NR) print (v[int((NR + 1) / 2)] + v[int(NR / 2) + 1]) / 2 }'
}

printf '%-5s %12s %14s %7s\n' pair relay relay+plugins ratio
for i in $(seq "$PAIRS"); do
    if ! SERVERS="relay relay+plugins" SIZES=$SIZE SESSIONS=$SESSIONS \
        MESSAGES="$SESSIONS:$COUNT" "$HERE/compare.sh" "$@" >"$OUT/$i.txt" 2>&1; then
        echo "plugin-pairs: compare.sh failed in pair $i:" >&2
        tail -n 20 "$OUT/$i.txt" >&2
        exit 1
    fi
    plain=$(e2e_of "$OUT/$i.txt" relay)
    plugins=$(e2e_of "$OUT/$i.txt" relay+plugins)
    if [[ -z $plain || -z $plugins ]]; then
        echo "plugin-pairs: no e2e figures in pair $i:" >&2
        tail -n 20 "$OUT/$i.txt" >&2
        exit 1
    fi
    ratio=$(awk -v a="$plain" -v b="$plugins" 'BEGIN { printf "%.1f", 100 * b / a }')
    printf '%-5s %12s %14s %6s%%\n' "$i" "$plain" "$plugins" "$ratio"
    echo "$plain $plugins $ratio" >>"$OUT/pairs"
    # compare.sh notes a relay that logged warnings (a plugin refused, say) in its row.
    if grep -q 'relay warnings' "$OUT/$i.txt"; then
        echo "      (pair $i: the relay logged warnings; see compare.sh's note)"
    fi
done

ratios_median=$(awk '{ print $3 }' "$OUT/pairs" | median)
ratios_mean=$(awk '{ s += $3 } END { printf "%.1f", s / NR }' "$OUT/pairs")
plain_median=$(awk '{ print $1 }' "$OUT/pairs" | median)
plugins_median=$(awk '{ print $2 }' "$OUT/pairs" | median)
echo
echo "$PAIRS pairs of $COUNT messages of $SIZE bytes over $SESSIONS sessions"
printf 'ratio: median %.1f%%, mean %s%%; median rates %s and %s msgs/s (%.1f%%)\n' \
    "$ratios_median" "$ratios_mean" "$plain_median" "$plugins_median" \
    "$(awk -v a="$plain_median" -v b="$plugins_median" 'BEGIN { print 100 * b / a }')"
