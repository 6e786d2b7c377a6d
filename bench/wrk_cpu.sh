#!/usr/bin/env bash
# CPU per request under wrk (a C client), the way issue 10's floor table was measured:
#   bench/wrk_cpu.sh [runs] [seconds]        (defaults 3 runs of 5 s per row)
# Starts bench/mock_upstream.py (20 chunks of 8 bytes, no delay) and a gateway on a fresh
# database with a funded user (auth, limits, reservation, billing, metrics, access log on),
# then runs wrk -t1 -c50: plain and 20-chunk stream through the gateway, and plain at the
# mock alone. Reads utime+stime from /proc for each process; prints the medians per row
# and the gateway/mock ratio, which cancels most of a shared machine's drift.
# XAI_PY=/path/to/python runs the gateway with another interpreter; XAI_SRC=/other/checkout
# runs that checkout's gateway (A/B of two commits with the same mock and wrk). XAI_THIN=1
# adds bench/thin_proxy.py's rows: the same server and upstream pool with no logic (the floor).
# Where PostgreSQL and Redis are installed, a second gateway runs on them (started by
# bench/pg_redis.py the way the tests start them; XAI_NO_PG=1 skips it): its rows are
# "pg+redis-*", with the CPU that PostgreSQL and Redis spent per request in their own column.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
secs=${2:-5}
py=$PWD/.venv/bin/python
gwpy=${XAI_PY:-$py}
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)"; exit 2; }
tmp=$(mktemp -d)
root="sk-Xvs$(printf 'r%.0s' $(seq 45))"
free_port() { $py -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
mport=$(free_port)
gport=$(free_port)
$py bench/mock_upstream.py --port "$mport" --chunks 20 --chunk-size 8 >"$tmp/mock.log" 2>&1 &
mpid=$!
(cd "${XAI_SRC:-.}" && XAI_ROOT_KEY=$root XAI_ALLOW_PRIVATE_PROVIDERS=1 \
  XAI_ACCESS_LOG="$tmp/access.log" PYTHONPATH="${XAI_SRC:-}" \
  exec "$gwpy" -m xaiproxy serve --host 127.0.0.1 --port "$gport" --db "$tmp/x.db") >"$tmp/gw.log" 2>&1 &
gpid=$!
tpid=
if [ -n "${XAI_THIN:-}" ]; then  # the floor: aiohttp server + xaiproxy's pool, no logic
  tport=$(free_port)
  $py bench/thin_proxy.py --port "$tport" --upstream "http://127.0.0.1:$mport" >"$tmp/thin.log" 2>&1 &
  tpid=$!
fi
spid= ppid= pgpid= rpid=
if [ -z "${XAI_NO_PG:-}" ]; then  # PostgreSQL + Redis, started as the tests start them
  $py bench/pg_redis.py >"$tmp/servers.txt" 2>"$tmp/servers.log" &
  spid=$!
fi
trap 'kill $mpid $gpid $tpid $ppid 2>/dev/null; [ -n "$spid" ] && kill $spid 2>/dev/null && wait $spid; rm -rf "$tmp"' EXIT
auth=(-H "Authorization: Bearer $root")
setup() {  # port -> the funded user's key, after a provider key at the mock
  for _ in $(seq 100); do curl -sf "127.0.0.1:$1/healthz" >/dev/null && break; sleep 0.1; done
  curl -sf "127.0.0.1:$1/x-keys" "${auth[@]}" \
    -d "{\"SecretKey\":\"sk-mock-aaaaaaaaaaaaaaaaaaaaaaaa\",\"Level\":1,\"Provider\":\"http://127.0.0.1:$mport\"}" >/dev/null
  curl -sf "127.0.0.1:$1/x-users" "${auth[@]}" \
    -d '{"Name":"wrk-user","Email":"wrk@example.com","CreditGranted":1000000,"RPM":100000000,"TPM":1000000000}' \
    | $py -c 'import sys,json;print(json.load(sys.stdin)["User"]["SecretKey"])' 2>/dev/null
}
key=$(setup "$gport")
grep -i "speedups" "$tmp/gw.log" || true
if [ -n "$spid" ]; then
  for _ in $(seq 300); do [ -s "$tmp/servers.txt" ] || ! kill -0 $spid 2>/dev/null && break; sleep 0.1; done
  if read -r dburl redisurl pgpid rpid <"$tmp/servers.txt" 2>/dev/null && [ -n "$rpid" ]; then
    pport=$(free_port)
    (cd "${XAI_SRC:-.}" && XAI_ROOT_KEY=$root XAI_ALLOW_PRIVATE_PROVIDERS=1 \
      XAI_ACCESS_LOG="$tmp/access-pg.log" PYTHONPATH="${XAI_SRC:-}" XAI_REDIS="$redisurl" \
      exec "$gwpy" -m xaiproxy serve --host 127.0.0.1 --port "$pport" --db "$dburl") >"$tmp/gw-pg.log" 2>&1 &
    ppid=$!
    pkey=$(setup "$pport") || { echo "the PostgreSQL + Redis gateway did not start:"; tail -20 "$tmp/gw-pg.log"; ppid=; }
  else
    echo "no PostgreSQL + Redis rows: $(cat "$tmp/servers.log")"
  fi
fi
for mode in plain stream; do
  stream=false; [ "$mode" = stream ] && stream=true
  cat >"$tmp/$mode.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"model":"gpt-4o-mini","max_tokens":256,"stream":$stream,"messages":[{"role":"user","content":"Say hello."}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $key"
LUA
  sed "s/Bearer $key/Bearer ${pkey:-none}/" "$tmp/$mode.lua" >"$tmp/$mode-pg.lua"
done
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
state_cpu() {  # PostgreSQL (the postmaster and its backends) + Redis; 0 without them
  local t=0 p
  [ -n "$ppid" ] || { echo 0; return; }
  for p in $pgpid $(pgrep -P "$pgpid") $rpid; do t=$((t + $(cpu "$p" 2>/dev/null || echo 0))); done
  echo $t
}
tick=$(getconf CLK_TCK)
row() {  # name url script [pid]: one wrk run; prints name, requests, proxy, mock and state CPU us/req
  local g0 m0 s0 g1 m1 s1 n p=${4:-$gpid}
  g0=$(cpu $p); m0=$(cpu $mpid); s0=$(state_cpu)
  n=$(wrk -t1 -c50 -d"${secs}s" -s "$3" "$2/v1/chat/completions" | awk '/requests in/{print $1}')
  g1=$(cpu $p); m1=$(cpu $mpid); s1=$(state_cpu)
  echo "$1 $n $(( (g1 - g0) * 1000000 / tick / n )) $(( (m1 - m0) * 1000000 / tick / n ))" \
    "$(( (s1 - s0) * 1000000 / tick / n ))"
}
wrk -t1 -c50 -d2s -s "$tmp/plain.lua" "http://127.0.0.1:$gport/v1/chat/completions" >/dev/null  # warm-up
if [ -n "$ppid" ]; then
  wrk -t1 -c50 -d2s -s "$tmp/plain-pg.lua" "http://127.0.0.1:$pport/v1/chat/completions" >/dev/null
fi
for _ in $(seq "$runs"); do
  row mock-plain "http://127.0.0.1:$mport" "$tmp/plain.lua"
  row gateway-plain "http://127.0.0.1:$gport" "$tmp/plain.lua"
  row gateway-stream "http://127.0.0.1:$gport" "$tmp/stream.lua"
  if [ -n "$ppid" ]; then
    row pg+redis-plain "http://127.0.0.1:$pport" "$tmp/plain-pg.lua" "$ppid"
    row pg+redis-stream "http://127.0.0.1:$pport" "$tmp/stream-pg.lua" "$ppid"
  fi
  if [ -n "$tpid" ]; then
    row thin-plain "http://127.0.0.1:$tport" "$tmp/plain.lua" "$tpid"
    row thin-stream "http://127.0.0.1:$tport" "$tmp/stream.lua" "$tpid"
  fi
done | $py -c '
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in sys.stdin:
    name, n, gw, mock, state = line.split()
    rows[name].append((int(n), int(gw), int(mock), int(state)))
head = ("what", "req/s", "gateway CPU us/req", "mock CPU us/req", "gw/mock", "pg+redis CPU us/req")
print("%-16s %8s %19s %16s %8s %20s" % head)
secs = float(sys.argv[1])
for name, v in rows.items():
    n = statistics.median(r[0] for r in v) / secs
    g = statistics.median(r[1] for r in v)
    m = statistics.median(r[2] for r in v)
    st = str(statistics.median(r[3] for r in v)) if name.startswith("pg+") else "-"
    ratio = statistics.median(r[1] / r[2] for r in v if r[2]) if name != "mock-plain" else 0
    gw = "-" if name == "mock-plain" else str(g)
    print(f"{name:<16} {n:>8.0f} {gw:>19} {m:>16} {ratio:>8.2f} {st:>20}")
' "$secs"
