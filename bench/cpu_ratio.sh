#!/usr/bin/env bash
# Gateway CPU per request, and its ratio to the mock's, for quick A/B runs of one change:
#   bench/cpu_ratio.sh [runs]      (XAI_METRICS=false bench/cpu_ratio.sh to compare metrics off)
# Starts the mock (20-chunk streams) and a gateway on a fresh database with a funded user,
# runs loadgen -c 50 -n 6000 plain and streamed `runs` times each, reads utime+stime from
# /proc for both processes, prints each run and the median gateway/mock ratio. The ratio
# cancels most of the machine's drift; the raw numbers do not.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
tmp=$(mktemp -d)
py=.venv/bin/python
root="sk-Xvs$(printf 'r%.0s' $(seq 45))"
mport=$($py -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
gport=$($py -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
$py bench/mock_upstream.py --port "$mport" --chunks 20 >"$tmp/mock.log" 2>&1 &
mpid=$!
XAI_ROOT_KEY=$root XAI_ALLOW_PRIVATE_PROVIDERS=1 XAI_ACCESS_LOG="$tmp/access.log" \
  .venv/bin/xaiproxy serve --host 127.0.0.1 --port "$gport" --db "$tmp/x.db" >"$tmp/gw.log" 2>&1 &
gpid=$!
trap 'kill $mpid $gpid 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 100); do curl -sf "127.0.0.1:$gport/healthz" >/dev/null && break; sleep 0.1; done
auth=(-H "Authorization: Bearer $root")
curl -sf "127.0.0.1:$gport/x-keys" "${auth[@]}" \
  -d "{\"SecretKey\":\"sk-mock-aaaaaaaaaaaaaaaaaaaaaaaa\",\"Level\":1,\"Provider\":\"http://127.0.0.1:$mport\"}" >/dev/null
key=$(curl -sf "127.0.0.1:$gport/x-users" "${auth[@]}" \
  -d '{"Name":"ab-user","Email":"ab@example.com","CreditGranted":1000000,"RPM":10000000,"TPM":1000000000}' \
  | $py -c 'import sys,json;print(json.load(sys.stdin)["User"]["SecretKey"])')
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
tick=$(getconf CLK_TCK)
for mode in plain stream; do
  flag=(); [ "$mode" = stream ] && flag=(--stream)
  for _ in $(seq "$runs"); do
    g0=$(cpu $gpid); m0=$(cpu $mpid)
    $py bench/loadgen.py "http://127.0.0.1:$gport" --key "$key" -c 50 -n 6000 -d 0 "${flag[@]}" >/dev/null
    g1=$(cpu $gpid); m1=$(cpu $mpid)
    echo "$mode $(( (g1 - g0) * 1000000 / tick / 6000 )) $(( (m1 - m0) * 1000000 / tick / 6000 ))"
  done
done | $py -c '
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in sys.stdin:
    mode, gw, mock = line.split()
    runs[mode].append((int(gw), int(mock)))
for mode, v in runs.items():
    ratio = statistics.median(g / m for g, m in v)
    print(f"{mode}: gateway us/req {[g for g, _ in v]}, mock {[m for _, m in v]}, median ratio {ratio:.2f}")
'
