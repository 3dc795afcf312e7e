"""`python -m gateway`: serve the gateway with uvicorn (uvloop + httptools).

Listens on GATEWAY_PORT (8080) and, when set, also on OLLAMA_PORT (e.g. 11434, so Ollama clients work
with their default host) and MTPHOTOS_PORT (e.g. 8060, MT Photos' default): one app, several sockets.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket

import uvicorn

from gateway.app import create_app


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        msg = f"gateway: cannot listen on {host}:{port}: {e.strerror} (is something else using it?)"
        raise SystemExit(msg) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def ports(args: argparse.Namespace) -> list[int]:
    extra = [os.environ.get("OLLAMA_PORT"), os.environ.get("MTPHOTOS_PORT")]
    return list(dict.fromkeys([args.port, *(int(p) for p in extra if p)]))


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m gateway")
    p.add_argument("--host", default=os.environ.get("GATEWAY_HOST", "0.0.0.0"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GATEWAY_PORT", "8080")))
    p.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "info"))
    args = p.parse_args()
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sockets = [bind(args.host, port) for port in ports(args)]
    config = uvicorn.Config(
        create_app(), loop="uvloop", http="httptools", log_level=args.log_level, access_log=False,
        timeout_keep_alive=75, server_header=False, date_header=False,
    )
    server = uvicorn.Server(config)
    where = ", ".join(f"{args.host}:{s.getsockname()[1]}" for s in sockets)
    logging.getLogger("gateway").info("listening on %s", where)
    server.run(sockets=sockets)


if __name__ == "__main__":
    main()
