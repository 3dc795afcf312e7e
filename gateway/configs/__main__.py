"""`python -m gateway.configs list|validate|show NAME|get NAME FIELD` for operators and scripts."""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from gateway.configs.catalog import ConfigError, configs_dir, load_catalog, load_file


def _list(args: argparse.Namespace) -> int:
    cat = load_catalog()
    if args.json:
        print(json.dumps([c.model_dump(mode="json") for c in cat], indent=1))
        return 0
    rows = [("CONFIG", "ENGINE", "MODEL", "GPUS", "PROTOCOLS")]
    for c in cat:
        gpus = f"{c.gpus.count}x {c.gpus.vendor}" if c.gpus.count else "cpu"
        rows.append((c.name, c.engine.value, c.model.served_name, gpus, ",".join(p.value for p in c.protocols)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _validate(args: argparse.Namespace) -> int:
    if args.files:
        for f in args.files:
            load_file(__import__("pathlib").Path(f))
        print(f"{len(args.files)} file(s) valid")
        return 0
    cat = load_catalog()
    print(f"{len(cat)} configs valid in {configs_dir()}")
    return 0


def _show(args: argparse.Namespace) -> int:
    cfg = load_catalog().require(args.name)
    data = cfg.model_dump(mode="json", exclude_none=True)
    data["derived"] = {"image": cfg.image, "port": cfg.port, "health": cfg.health, "model_names": cfg.model_names()}
    print(json.dumps(data, indent=1) if args.json else yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return 0


def _get(args: argparse.Namespace) -> int:
    """One field by dotted path (derived properties included), for shell scripts."""
    value: object = load_catalog().require(args.name)
    for part in args.field.split("."):
        value = value.get(part) if isinstance(value, dict) else getattr(value, part)
    if hasattr(value, "value"):
        value = value.value
    print(json.dumps(value) if isinstance(value, list | dict) else ("" if value is None else value))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway.configs", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("list", help="every config, one per line")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_list)
    s = sub.add_parser("validate", help="validate the catalog (or the given files)")
    s.add_argument("files", nargs="*")
    s.set_defaults(fn=_validate)
    s = sub.add_parser("show", help="one config with its derived values")
    s.add_argument("name")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_show)
    s = sub.add_parser("get", help="one field of a config, by dotted path")
    s.add_argument("name")
    s.add_argument("field")
    s.set_defaults(fn=_get)
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except AttributeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
