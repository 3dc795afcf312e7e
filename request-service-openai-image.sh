#!/usr/bin/env bash
# Generate one image through the gateway's OpenAI image API, save it as PNG and print its path.
#   ./request-service-openai-image.sh <model> [prompt]
#   GATEWAY_URL (default http://127.0.0.1:8080); API_KEY: sent as a Bearer token when keys are configured;
#   SIZE (default: the model's), STEPS, SEED, OUT_DIR (default .run/images).
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 <model> [prompt]" >&2; exit 2; }
model=$1; prompt=${2:-"A watercolor painting of a lighthouse on a cliff at sunrise"}
url=${GATEWAY_URL:-http://127.0.0.1:8080}
out_dir=${OUT_DIR:-$(cd "$(dirname "$0")" && pwd)/.run/images}
mkdir -p "$out_dir"
body=$(python3 -c 'import json, os, sys
b = {"model": sys.argv[1], "prompt": sys.argv[2], "n": 1, "response_format": "b64_json"}
for key, cast in (("SIZE", str), ("STEPS", int), ("SEED", int)):
    if os.environ.get(key):
        b[key.lower()] = cast(os.environ[key])
print(json.dumps(b))' "$model" "$prompt")
file="$out_dir/$(date +%Y%m%d-%H%M%S)-$$.png"
curl -sS --max-time "${TIMEOUT_S:-900}" "$url/v1/images/generations" \
  -H "Content-Type: application/json" ${API_KEY:+-H "Authorization: Bearer $API_KEY"} -d "$body" \
  | python3 -c '
import base64, json, sys
reply = json.load(sys.stdin)
if "error" in reply:
    print("error:", reply["error"].get("message"), file=sys.stderr); sys.exit(1)
item = reply["data"][0]
open(sys.argv[1], "wb").write(base64.b64decode(item["b64_json"]))
print("seed", item.get("seed"), file=sys.stderr)
print(sys.argv[1])' "$file"
