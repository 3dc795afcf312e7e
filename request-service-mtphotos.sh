#!/usr/bin/env bash
# Call the MT Photos AI API through the gateway, the way MT Photos does.
# Usage: ./request-service-mtphotos.sh TASK [FILE-OR-TEXT]
#   check                 POST /check                 (service status and settings)
#   ocr FILE              POST /ocr        (multipart "file")
#   clip-img FILE         POST /clip/img   (multipart "file")  -> 512 numbers as strings
#   clip-txt TEXT         POST /clip/txt   ({"text": TEXT})     -> 512 numbers as strings
#   represent FILE        POST /represent  (multipart "file")  -> faces with 512-d embeddings
#   restart | restart_v2  POST /restart, /restart_v2 (restart_v2 releases and reloads the models)
# Env: GATEWAY_URL (default http://127.0.0.1:8080), API_AUTH_KEY (default mt_photos_ai_extra),
#      FULL=1 to print whole vectors (default: first 8 values and the length).
set -euo pipefail
URL=${GATEWAY_URL:-http://127.0.0.1:8080}
KEY=${API_AUTH_KEY:-mt_photos_ai_extra}
task=${1:-}; arg=${2:-}

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
need_file() { [ -n "$arg" ] && [ -f "$arg" ] || { echo "$task needs an image file (got '${arg}')" >&2; exit 2; }; }

call() {  # call PATH CURL-ARGS...: prints the body; HTTP status on stderr when not 200
  local path=$1; shift
  local out status
  out=$(curl -sS -X POST -H "api-key: $KEY" -w '\n%{http_code}' "$@" "$URL$path") || {
    echo "cannot reach the gateway at $URL (is it running? ./start-service.sh --local mt-photos-cpu)" >&2; exit 1; }
  status=${out##*$'\n'}; out=${out%$'\n'*}
  if [ "${FULL:-0}" = 1 ] || ! command -v python3 >/dev/null; then echo "$out"; else
    printf '%s' "$out" | python3 -c '
import json, sys
raw = sys.stdin.read()
try:
    body = json.loads(raw)
except ValueError:
    print(raw); sys.exit()
def short(v):
    if isinstance(v, list) and len(v) > 16 and all(not isinstance(x, (dict, list)) for x in v):
        return v[:8] + [f"... ({len(v)} values)"]
    if isinstance(v, list):
        return [short(x) for x in v]
    if isinstance(v, dict):
        return {k: short(x) for k, x in v.items()}
    return v
print(json.dumps(short(body), ensure_ascii=False, indent=1))'
  fi
  [ "$status" = 200 ] || { echo "HTTP $status" >&2; exit 1; }
}

case "$task" in
  check) call /check ;;
  ocr) need_file; call /ocr -F "file=@$arg" ;;
  clip-img) need_file; call /clip/img -F "file=@$arg" ;;
  represent) need_file; call /represent -F "file=@$arg" ;;
  clip-txt)
    [ -n "$arg" ] || { echo "clip-txt needs a text" >&2; exit 2; }
    body=$(TEXT="$arg" python3 -c 'import json, os; print(json.dumps({"text": os.environ["TEXT"]}))')
    call /clip/txt -H 'Content-Type: application/json' --data-binary "$body" ;;
  restart) call /restart ;;
  restart_v2) call /restart_v2 ;;
  *) usage ;;
esac
