#!/usr/bin/env bash
# Send a chat completion through the gateway and print the answer as it streams.
#   ./request-service-openai-text.sh <model> [prompt]       GATEWAY_URL (default http://127.0.0.1:8080)
#   API_KEY: sent as a Bearer token when the gateway has keys configured.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 <model> [prompt]" >&2; exit 2; }
model=$1; prompt=${2:-"Say hello in one short sentence."}
url=${GATEWAY_URL:-http://127.0.0.1:8080}
body=$(python3 -c 'import json,sys; print(json.dumps({"model": sys.argv[1], "stream": True, "max_tokens": 256,
  "messages": [{"role": "user", "content": sys.argv[2]}]}))' "$model" "$prompt")
curl -sS -N --fail-with-body "$url/v1/chat/completions" -H "Content-Type: application/json" \
  ${API_KEY:+-H "Authorization: Bearer $API_KEY"} -d "$body" | python3 -u -c '
import json, sys
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("data: ") or line == "data: [DONE]":
        if line.startswith("{"):  # a non-stream error body
            print(json.loads(line).get("error", {}).get("message", line), file=sys.stderr); sys.exit(1)
        continue
    chunk = json.loads(line[6:])
    if "error" in chunk:
        print("\nerror:", chunk["error"].get("message"), file=sys.stderr); sys.exit(1)
    for c in chunk.get("choices", []):
        d = c.get("delta", {})
        thinking = d.get("reasoning_content") or d.get("reasoning")
        if thinking:  # reasoning models: the thinking goes to stderr, the answer to stdout
            print(thinking, end="", file=sys.stderr, flush=True)
        print(d.get("content") or "", end="", flush=True)
print()
'
