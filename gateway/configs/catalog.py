"""Load and validate `configs/*.yaml` into `Config` objects, with errors an operator can act on."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from gateway.configs.schema import Config

ROOT = Path(__file__).resolve().parents[2]


def configs_dir() -> Path:
    return Path(os.environ.get("PLATFORM_CONFIGS", ROOT / "configs"))


class ConfigError(Exception):
    """A config file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Catalog:
    configs: dict[str, Config]

    def __iter__(self) -> Iterator[Config]:
        return iter(self.configs.values())

    def __len__(self) -> int:
        return len(self.configs)

    def get(self, name: str) -> Config | None:
        return self.configs.get(name)

    def names(self) -> list[str]:
        return sorted(self.configs)

    def require(self, name: str) -> Config:
        cfg = self.configs.get(name)
        if cfg is None:
            raise ConfigError(f"unknown config {name!r}; known configs: {', '.join(self.names())}")
        return cfg


def _format(path: Path, err: ValidationError) -> str:
    lines = [f"{path.name}: {err.error_count()} problem(s)"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {where}: {e['msg']}")
    return "\n".join(lines)


def load_file(path: Path) -> Config:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path.name}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path.name}: expected a mapping at the top level")
    data.setdefault("name", path.stem)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format(path, e)) from None
    if cfg.name != path.stem:
        raise ConfigError(f"{path.name}: name {cfg.name!r} must match the file name {path.stem!r}")
    return cfg


def load_catalog(directory: Path | None = None) -> Catalog:
    """Every config in the directory; all problems are reported at once."""
    directory = directory or configs_dir()
    configs: dict[str, Config] = {}
    problems: list[str] = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            configs[path.stem] = load_file(path)
        except ConfigError as e:
            problems.append(str(e))
    problems += _duplicate_names(configs)
    if problems:
        raise ConfigError("\n".join(problems))
    return Catalog(configs)


def _duplicate_names(configs: dict[str, Config]) -> list[str]:
    """A model name must lead to one config: two configs claiming it would make routing ambiguous."""
    seen: dict[str, str] = {}
    problems = []
    for cfg in configs.values():
        for n in cfg.model_names():
            other = seen.setdefault(n, cfg.name)
            if other != cfg.name and n not in (cfg.model.served_name,):
                problems.append(f"model name {n!r} is claimed by both {other!r} and {cfg.name!r}")
    return problems
