#!/bin/bash
# ab.sh: before/after of one INS change in one run. Builds of the two
# sides are given as bin directories (each with isolator, libmpshim.so,
# udpecho); runs `mpbench --rounds 1` on A and B alternately N times
# (A B B A A B ... so that drift hits both alike) with the same flags and
# prints each run's table rows for the figures named by GREP, then the
# medians per side.
#
#   bench/ab/ab.sh A_BIN B_BIN N 'mpbench flags' 'row regexp'
#   bench/ab/ab.sh /tmp/a/bin /tmp/b/bin 3 '--only http --duration 5s' 'wrk -t1 -c64|of which INS|frames sent'
set -euo pipefail
a=$1 b=$2 n=$3 flags=$4 rows=$5
out=${OUT:-$(mktemp -d /tmp/mpbench-ab.XXXXXX)}
mkdir -p "$out"
mpbench=${MPBENCH:-$a/mpbench}
order=()
for ((i = 0; i < n; i++)); do
	if ((i % 2 == 0)); then order+=(A B); else order+=(B A); fi
done
k=0
for side in "${order[@]}"; do
	k=$((k + 1))
	bin=$a
	[[ $side == B ]] && bin=$b
	# A run that fails (a warm-up starved by other work) is retried once.
	for try in 1 2; do
		rm -rf "${out:?}/$k-$side"
		# shellcheck disable=SC2086
		if "$mpbench" --bin "$bin" --rounds 1 --doc "" --out "$out/$k-$side" $flags >"$out/$k-$side.log" 2>&1; then
			break
		fi
		echo "run $k ($side) failed (try $try): $(tail -1 "$out/$k-$side.log")" >&2
		((try == 2)) && exit 1
	done
	echo "== run $k side $side ($(cut -d' ' -f1-3 /proc/loadavg))"
	grep -E "^\| " "$out/$k-$side"/*.md | grep -E -- "$rows" | awk -F'|' '{print "  " $2 "|" $5}' || true
done
echo "== medians of the mpshim column, A then B (values of each run in order); logs in $out"
for side in A B; do
	for f in "$out"/*-"$side"/*.md; do
		# Rows of the same name (the CPU rows of redis -P1 and -P16)
		# are told apart by their rank among their namesakes.
		grep -E "^\| " "$f" | grep -E -- "$rows" | awk -F'|' '{n[$2]++; print $2 "#" n[$2] "|" $5}'
	done | python3 -c '
import sys, statistics, re
side = sys.argv[1]
vals = {}
for line in sys.stdin:
    k, v = line.rsplit("|", 1)
    m = re.match(r"\s*([0-9.]+)", v)
    if m:
        vals.setdefault(k.strip(), []).append(float(m.group(1)))
for k, vs in vals.items():
    name, rank = k.rsplit("#", 1)
    if rank != "1":
        name = f"{name.strip()} ({rank})"
    print(f"{side} | {name.strip()} | {statistics.median(vs):.4g} | {vs}")
' "$side"
done
