"""Container health: the supervisor's /healthz (admin port), or vLLM's /health when LLM_LIFECYCLE=off.

The supervisor is healthy while unloaded (lazy load): "healthy" means "can serve on demand".
"""

from __future__ import annotations

import os
import sys
import urllib.request


def main() -> int:
    off = os.environ.get("LLM_LIFECYCLE", "on").lower() in ("off", "0", "false", "no")
    port = int(os.environ.get("PORT", "8000"))
    admin = int(os.environ.get("ADMIN_PORT") or port + 1)
    url = f"http://127.0.0.1:{port}/health" if off else f"http://127.0.0.1:{admin}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return 0 if r.status == 200 else 1
    except OSError as e:
        print(f"unhealthy: {url}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
