"""The config catalog: one YAML per config name, one schema."""

from gateway.configs.catalog import Catalog, ConfigError, load_catalog, load_file
from gateway.configs.schema import Capability, Config, Engine, Protocol

__all__ = ["Capability", "Catalog", "Config", "ConfigError", "Engine", "Protocol", "load_catalog", "load_file"]
