#!/usr/bin/env bash
# Ingest throughput, measured against the floor in the same run: a bare Rust echo worker
# built with the same toolchain. Both run under `wrangler dev` (local workerd); wrk
# (Debian package) posts for BENCH_SECONDS (15) with BENCH_CONNECTIONS (16), interleaved
# echo, TrackLayer, echo, TrackLayer. Both get distinct, freshly signed Stripe webhooks
# (the same bytes: the echo reads each and sends it back); TrackLayer's are for a Scale
# merchant with a Meta destination (a local sink answers 200), so the queue consumer
# runs too. BENCH_ECHO_BODY=ping posts the echo a 10-byte body instead (the floor this
# script measured before 2026-11-30). The ingest rate limit is raised in a generated config so
# it is not what is measured. Prints requests/s, p50, p99 and the ratio.
# BENCH_MERCHANTS (1) spreads the webhooks over that many merchants: each merchant's
# records are one Durable Object, which runs its requests one at a time.
# BENCH_LOCAL_OBSERVABILITY=0 turns off, for both workers, wrangler dev's local
# observability collector (X_LOCAL_OBSERVABILITY): on by default, it receives every
# invocation, storage statement and subrequest as a trace event on the worker's own
# thread, which production does not do.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
bash scripts/setup.sh >/dev/null
command -v wrk >/dev/null || { echo "bench: install wrk (apt-get install wrk)" >&2; exit 1; }
SECONDS_PER_RUN="${BENCH_SECONDS:-15}"
CONNECTIONS="${BENCH_CONNECTIONS:-16}"
MERCHANTS="${BENCH_MERCHANTS:-1}"
LOG_LEVEL="${BENCH_LOG_LEVEL:-info}"
# BENCH_DESTINATIONS=0 connects no destination: ingest alone, no queue or consumer work.
DESTINATIONS="${BENCH_DESTINATIONS:-1}"
ECHO_BODY="${BENCH_ECHO_BODY:-webhooks}"
if [ "${BENCH_LOCAL_OBSERVABILITY:-1}" = 0 ]; then
  export X_LOCAL_OBSERVABILITY=false
fi
WORK="$(mktemp -d /tmp/tracklayer-bench.XXXXXX)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK" wrangler.bench.generated.toml
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() {
  for _ in $(seq 1 180); do
    curl -fsS "http://127.0.0.1:$1$2" >/dev/null 2>&1 && return 0
    sleep 1
  done
  echo "bench: nothing answered on port $1; logs:" >&2
  tail -20 "$WORK"/*.log >&2
  exit 1
}

echo "bench: building TrackLayer and the echo worker (release)"
bash scripts/build-worker.sh >/dev/null
bash scripts/build-echo-worker.sh >/dev/null

# A local sink standing in for Meta, so deliveries succeed quickly.
SINK_PORT=$(free_port)
python3 - "$SINK_PORT" >/dev/null 2>&1 <<'PY' &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = b'{"events_received":1,"fbtrace_id":"bench"}'
        self.send_response(200); self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
PIDS+=($!)

# TrackLayer with the rate limits out of the way (INGEST_RATE_LIMIT below; the
# unverified budget here).
sed -e 's/simple = { limit = 120, period = 60 }/simple = { limit = 100000000, period = 60 }/' \
    wrangler.toml > wrangler.bench.generated.toml
STATE="$WORK/state"; mkdir -p "$STATE"
for binding in DB DB_US DB_EU; do
  wrangler d1 migrations apply "$binding" --local --persist-to "$STATE" -c wrangler.bench.generated.toml >/dev/null
done
TL_PORT=$(free_port)
TL_INSPECTOR=$(free_port)
ADMIN="bench-admin-token"
setsid bash -c "export TRACKLAYER_SKIP_BUILD=1; exec wrangler dev -c wrangler.bench.generated.toml --local --ip 127.0.0.1 \
  --port $TL_PORT --inspector-port $TL_INSPECTOR --persist-to '$STATE' --show-interactive-dev-session=false \
  --var ADMIN_TOKEN:$ADMIN --var MASTER_KEYS:b1:KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio= \
  --var LOCAL_WORKERD_WITHOUT_JURISDICTIONS:true --var META_API_BASE_URL:http://127.0.0.1:$SINK_PORT \
  --var LOG_LEVEL:$LOG_LEVEL --var INGEST_RATE_LIMIT:100000000" \
  </dev/null >"$WORK/tracklayer.log" 2>&1 &
PIDS+=($!)
TL_PID=$!
ECHO_PORT=$(free_port)
setsid bash -c "cd benches/echo-worker && export TRACKLAYER_SKIP_BUILD=1 && exec wrangler dev --local --ip 127.0.0.1 \
  --port $ECHO_PORT --inspector-port $(free_port) --show-interactive-dev-session=false" </dev/null >"$WORK/echo.log" 2>&1 &
PIDS+=($!)
ECHO_PID=$!
wait_ready "$TL_PORT" /healthz
wait_ready "$ECHO_PORT" /

auth=(-H "authorization: Bearer $ADMIN" -H "content-type: application/json")
for m in $(seq 0 $((MERCHANTS - 1))); do
  curl -fsS "${auth[@]}" -X POST "http://127.0.0.1:$TL_PORT/v1/admin/merchants" \
    -d "{\"merchant_id\":\"m_bench_$m\",\"plan\":\"scale\"}" >/dev/null
  curl -fsS "${auth[@]}" -X PUT "http://127.0.0.1:$TL_PORT/v1/admin/merchants/m_bench_$m/sources/stripe" \
    -d '{"endpoint_secrets":["whsec_bench_secret"]}' >/dev/null
  if [ "$DESTINATIONS" != 0 ]; then
    curl -fsS "${auth[@]}" -X PUT "http://127.0.0.1:$TL_PORT/v1/admin/merchants/m_bench_$m/destinations/meta" \
      -d '{"pixel_id":"px_bench","access_token":"tok_bench"}' >/dev/null
  fi
done

# Distinct subscriptions, signed now (Stripe's 300 s tolerance covers both runs).
sign_bodies() {
  python3 - "$1" "$WORK/bodies.$1.txt" "$MERCHANTS" <<'PY'
import hashlib, hmac, json, sys, time
run, out, merchants = sys.argv[1], sys.argv[2], int(sys.argv[3])
fixture = json.load(open("tests/fixtures/stripe/customer.subscription.created.active.json"))
now = int(time.time())
with open(out, "w") as f:
    for i in range(40000):
        fixture["id"] = f"evt_bench_{run}_{i:06d}"
        fixture["created"] = now - 5
        fixture["data"]["object"]["id"] = f"sub_bench_{run}_{i:06d}"
        body = json.dumps(fixture, separators=(",", ":"))
        sig = hmac.new(b"whsec_bench_secret", f"{now}.{body}".encode(), hashlib.sha256).hexdigest()
        path = f"/v1/integrations/stripe/events?merchant_id=m_bench_{i % merchants}"
        f.write(f"{path}\tt={now},v1={sig}\t{body}\n")
PY
}
cat > "$WORK/post.lua" <<'LUA'
-- Each wrk thread has its own Lua state: threads take interleaved lines, so no body is
-- sent twice (a duplicate would measure the cheaper dedup path).
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
local lines, i, step = {}, 0, 1
function init(args)
  local path = os.getenv("BENCH_BODIES")
  if path and path ~= "" then for line in io.lines(path) do lines[#lines + 1] = line end end
  i = tid or 0
  step = 2
end
request = function()
  if #lines == 0 then
    return wrk.format("POST", nil, { ["content-type"] = "application/json" }, '{"ping":1}')
  end
  local line = lines[(i % #lines) + 1]
  i = i + step
  local path, sig, body = line:match("^([^\t]+)\t([^\t]+)\t(.*)$")
  return wrk.format("POST", path, { ["content-type"] = "application/json", ["stripe-signature"] = sig }, body)
end
LUA

# CPU seconds used by a process tree (wrangler, workerd and their threads): steadier
# than requests/s on a shared machine, where wrk competes for the same cores.
cpu_seconds() {
  local pids=("$1") i=0
  while [ "$i" -lt "${#pids[@]}" ]; do
    pids+=($(pgrep -P "${pids[$i]}" || true)); i=$((i + 1))
  done
  local ticks=0 pid
  for pid in "${pids[@]}"; do
    ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
  done
  python3 -c "import os,sys; print(int(sys.argv[1]) / os.sysconf('SC_CLK_TCK'))" "$ticks"
}

run_wrk() { # name url bodies process
  local cpu_before; cpu_before=$(cpu_seconds "$4")
  BENCH_BODIES="$3" wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency -s "$WORK/post.lua" "$2" >"$WORK/$1.out" 2>&1
  local rps p50 p99 non2xx
  rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/$1.out")
  p50=$(awk '$1=="50%" {print $2}' "$WORK/$1.out")
  p99=$(awk '$1=="99%" {print $2}' "$WORK/$1.out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$WORK/$1.out")
  local requests cpu_ms
  requests=$(awk '/requests in/ {print $1}' "$WORK/$1.out")
  cpu_ms=$(python3 -c "import sys; print(f'{1000 * (float(sys.argv[2]) - float(sys.argv[1])) / max(int(sys.argv[3]), 1):.2f}')" \
    "$cpu_before" "$(cpu_seconds "$4")" "${requests:-0}")
  printf '%-12s %10s req/s   p50 %8s   p99 %8s   non-2xx %s   CPU %s ms/request\n' "$1" "$rps" "$p50" "$p99" "${non2xx:-0}" "$cpu_ms"
  echo "$cpu_ms" >"$WORK/$1.cpu"
  echo "$rps" >"$WORK/$1.rps"
}

metrics() { curl -fsS -H "authorization: Bearer $ADMIN" "http://127.0.0.1:$TL_PORT/v1/admin/metrics"; }
echo "bench: $CONNECTIONS connections, ${SECONDS_PER_RUN}s per run, $MERCHANTS merchant(s), LOG_LEVEL=$LOG_LEVEL, destinations: $DESTINATIONS, echo body: $ECHO_BODY, local observability: ${X_LOCAL_OBSERVABILITY:-true}"
# One warm-up webhook, so the merchant's settings are cached as in steady state.
sign_bodies 0
head -"$MERCHANTS" "$WORK/bodies.0.txt" | while IFS=$'\t' read -r path sig body; do
  curl -fsS -o /dev/null -H "stripe-signature: $sig" -H "content-type: application/json" \
    --data-binary "$body" "http://127.0.0.1:$TL_PORT$path"; done
metrics >"$WORK/metrics.before.json"
echo_bodies() { # run
  if [ "$ECHO_BODY" = ping ]; then echo ""; else sign_bodies "$1"; echo "$WORK/bodies.$1.txt"; fi
}
run_wrk echo-1 "http://127.0.0.1:$ECHO_PORT/" "$(echo_bodies 11)" "$ECHO_PID"
sign_bodies 1
# BENCH_PROFILE=file.cpuprofile records a V8 CPU profile of TrackLayer's first run
# through the inspector (scripts/profile.mjs prints where the time went). Profiling
# slows the worker: read that run's rate with care.
if [ -n "${BENCH_PROFILE:-}" ]; then
  node scripts/profile.mjs record "$TL_INSPECTOR" $((SECONDS_PER_RUN - 3)) "$BENCH_PROFILE" &
  PROFILER=$!
fi
run_wrk tracklayer-1 "http://127.0.0.1:$TL_PORT/" "$WORK/bodies.1.txt" "$TL_PID"
if [ -n "${PROFILER:-}" ]; then wait "$PROFILER"; fi
run_wrk echo-2 "http://127.0.0.1:$ECHO_PORT/" "$(echo_bodies 12)" "$ECHO_PID"
sign_bodies 2
run_wrk tracklayer-2 "http://127.0.0.1:$TL_PORT/" "$WORK/bodies.2.txt" "$TL_PID"
metrics >"$WORK/metrics.after.json"
python3 - "$WORK" <<'PY'
import json, sys
w = sys.argv[1]
r = lambda n: float(open(f"{w}/{n}.rps").read() or 0)
echo = (r("echo-1") + r("echo-2")) / 2
tl = (r("tracklayer-1") + r("tracklayer-2")) / 2
print(f"bench: echo {echo:.0f} req/s, TrackLayer {tl:.0f} req/s: {100 * tl / echo:.1f} % of echo")
c = lambda n: float(open(f"{w}/{n}.cpu").read() or 0)
echo_cpu = (c("echo-1") + c("echo-2")) / 2
tl_cpu = (c("tracklayer-1") + c("tracklayer-2")) / 2
print(f"bench: CPU per request (worker process tree): echo {echo_cpu:.2f} ms, TrackLayer {tl_cpu:.2f} ms "
      f"(TrackLayer's CPU includes its queue consumer's deliveries): echo's is {100 * echo_cpu / max(tl_cpu, 1e-9):.1f} % of it")
before = json.load(open(f"{w}/metrics.before.json"))["ingest"]
after = json.load(open(f"{w}/metrics.after.json"))["ingest"]
d = {k: after[k] - before[k] for k in after}
n = max(d["units"], 1)
print(f"bench: per accepted webhook (warm, {d['units']} webhooks): {d['d1_queries'] / n:.3f} D1 queries, "
      f"{d['object_calls'] / n:.3f} Durable Object calls, {d['rows_written'] / n:.1f} rows written, "
      f"{d['queue_messages_sent'] / n:.2f} queue messages in {d.get('queue_send_calls', 0) / n:.2f} sendBatch calls "
      f"(the merchant object's group commit)")
PY
# What the refused requests were, from the worker's structured log lines.
echo "bench: TrackLayer refusals by reason:"
grep -o '"msg":"request refused"[^}]*' "$WORK/tracklayer.log" | grep -o '"outcome":"[^"]*","status":[0-9]*\|"status":[0-9]*,"outcome":"[^"]*"\|"outcome":"[^"]*"' \
  | sort | uniq -c | sort -rn | head -5 || true
grep -o '"msg":"webhook not persisted[^}]*' "$WORK/tracklayer.log" | grep -o '"reason":"[^"]\{0,120\}' | sort | uniq -c | sort -rn | head -3 || true
