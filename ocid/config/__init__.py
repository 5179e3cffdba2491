"""ocid's configuration: the schema (one dataclass per TOML table) and its TOML reader/writer."""

from .loader import ConfigFlag, config_flags, load_config, render_toml, to_dict, validate
from .schema import DEFAULT_CONFIG_PATH, Config, RuntimeHandler

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "Config",
    "ConfigFlag",
    "RuntimeHandler",
    "config_flags",
    "load_config",
    "render_toml",
    "to_dict",
    "validate",
]
