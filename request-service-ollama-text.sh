#!/usr/bin/env bash
# Stream a chat through the gateway's Ollama API (/api/chat, NDJSON) and print the text as it arrives.
#   ./request-service-ollama-text.sh <model> [prompt]       GATEWAY_URL (default http://127.0.0.1:8080)
#   NUM_PREDICT: most tokens to generate (default 256). API_KEY: sent as a Bearer token when set.
# Thinking (reasoning models) goes to stderr, the answer to stdout; the final line's metrics go to stderr.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 <model> [prompt]" >&2; exit 2; }
model=$1; prompt=${2:-"Say hello in one short sentence."}
url=${GATEWAY_URL:-http://127.0.0.1:8080}
body=$(python3 -c 'import json,sys; print(json.dumps({"model": sys.argv[1], "stream": True,
  "options": {"num_predict": int(sys.argv[3])}, "messages": [{"role": "user", "content": sys.argv[2]}]}))' \
  "$model" "$prompt" "${NUM_PREDICT:-256}")
curl -sS -N --fail-with-body "$url/api/chat" -H "Content-Type: application/json" \
  ${API_KEY:+-H "Authorization: Bearer $API_KEY"} -d "$body" | python3 -u -c '
import json, sys
for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    obj = json.loads(line)
    if "error" in obj:  # an error reply, or one that ended the stream
        print("\nerror:", obj["error"], file=sys.stderr); sys.exit(1)
    msg = obj.get("message") or {}
    if msg.get("thinking"):
        print(msg["thinking"], end="", file=sys.stderr, flush=True)
    print(msg.get("content") or "", end="", flush=True)
    if obj.get("done"):
        print()
        n, ns = obj.get("eval_count") or 0, obj.get("eval_duration") or 0
        rate = f", {n / ns * 1e9:.0f} tokens/s" if n and ns else ""
        reason = obj.get("done_reason")
        print(f"\n[{reason}: {n} tokens{rate}]", file=sys.stderr)
'
