#!/usr/bin/env bash
# A/B of two checkouts' gateways, paired, for a machine shared with other jobs:
#   bench/wrk_ab.sh SRC_A SRC_B [plain|stream] [pairs] [seconds]   (defaults plain 8 4)
# Both gateways run at once on one mock (20 chunks of 8 bytes), each on a fresh database
# with a funded user (auth, limits, reservation, billing, metrics, access log on). Each pair
# is one wrk -t1 -c50 run against A and one against B, back to back (order alternating);
# gateway CPU (utime + stime from /proc) per request for each, and B/A per pair: drift
# of the machine hits both runs of a pair alike, so quote the median B/A, not the absolutes.
# SRC is a directory holding an `xaiproxy` package (e.g. a `git archive` of a commit).
# XAI_PG=1: both gateways on PostgreSQL + Redis (bench/pg_redis.py: one server each, a
# database and a Redis database per gateway) instead of SQLite files.
set -euo pipefail
A=$(realpath "$1"); B=$(realpath "$2"); mode=${3:-plain}; runs=${4:-8}; secs=${5:-4}
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)"; exit 2; }
py=$PWD/.venv/bin/python
tmp=$(mktemp -d)
root="sk-Xvs$(printf 'r%.0s' $(seq 45))"
free_port() { $py -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
mport=$(free_port)
$py bench/mock_upstream.py --port "$mport" --chunks 20 --chunk-size 8 >"$tmp/mock.log" 2>&1 &
mpid=$!
pids=($mpid)
spid=
trap 'kill ${pids[@]} 2>/dev/null; [ -n "$spid" ] && kill $spid 2>/dev/null && wait $spid; rm -rf "$tmp"' EXIT
declare -A db=([a]="$tmp/a.db" [b]="$tmp/b.db") rd=([a]="" [b]="")
if [ -n "${XAI_PG:-}" ]; then
  $py bench/pg_redis.py a b >"$tmp/servers.txt" 2>"$tmp/servers.log" &
  spid=$!
  for _ in $(seq 300); do [ -s "$tmp/servers.txt" ] || ! kill -0 $spid 2>/dev/null && break; sleep 0.1; done
  read -r db[a] db[b] redisurl _ _ <"$tmp/servers.txt" || { cat "$tmp/servers.log"; exit 3; }
  rd[a]=${redisurl%/0}/1; rd[b]=${redisurl%/0}/2
fi
start() { # src name -> sets port var
  local port; port=$(free_port)
  (cd "$1" && XAI_ROOT_KEY=$root XAI_ALLOW_PRIVATE_PROVIDERS=1 XAI_ACCESS_LOG="$tmp/$2.access" PYTHONPATH="$1" \
    XAI_REDIS="${rd[$2]}" exec $py -m xaiproxy serve --host 127.0.0.1 --port "$port" --db "${db[$2]}") >"$tmp/$2.log" 2>&1 &
  pids+=($!)
  echo "$port $!"
}
read pa ga < <(start "$A" a)
read pb gb < <(start "$B" b)
pids+=($ga $gb)
setup() {
  local port=$1
  for _ in $(seq 100); do curl -sf "127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  local auth=(-H "Authorization: Bearer $root")
  curl -sf "127.0.0.1:$port/x-keys" "${auth[@]}" -d "{\"SecretKey\":\"sk-mock-aaaaaaaaaaaaaaaaaaaaaaaa\",\"Level\":1,\"Provider\":\"http://127.0.0.1:$mport\"}" >/dev/null
  local key; key=$(curl -sf "127.0.0.1:$port/x-users" "${auth[@]}" -d '{"Name":"wrk-user","Email":"wrk@example.com","CreditGranted":1000000,"RPM":100000000,"TPM":1000000000}' | $py -c 'import sys,json;print(json.load(sys.stdin)["User"]["SecretKey"])')
  local stream=false; [ "$mode" = stream ] && stream=true
  cat >"$tmp/$port.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"model":"gpt-4o-mini","max_tokens":256,"stream":$stream,"messages":[{"role":"user","content":"Say hello."}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $key"
LUA
  wrk -t1 -c50 -d2s -s "$tmp/$port.lua" "http://127.0.0.1:$port/v1/chat/completions" >/dev/null
}
setup $pa; setup $pb
tick=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
one() { local g0 g1 n; g0=$(cpu $2); n=$(wrk -t1 -c50 -d"${secs}s" -s "$tmp/$1.lua" "http://127.0.0.1:$1/v1/chat/completions" | awk '/requests in/{print $1}'); g1=$(cpu $2); echo $(( (g1-g0)*1000000/tick/n )); }
for i in $(seq $runs); do
  if (( i % 2 )); then a=$(one $pa $ga); b=$(one $pb $gb); else b=$(one $pb $gb); a=$(one $pa $ga); fi
  echo "$a $b"
done | $py -c '
import sys, statistics
rows = [tuple(map(int, l.split())) for l in sys.stdin]
for a, b in rows: print(f"A {a:4d}  B {b:4d}  B/A {b/a:.3f}")
r = [b/a for a, b in rows]
print(f"median A {statistics.median(a for a,_ in rows)}  B {statistics.median(b for _,b in rows)}  B/A median {statistics.median(r):.3f}  min {min(r):.3f} max {max(r):.3f}")
'
