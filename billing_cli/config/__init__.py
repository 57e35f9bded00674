"""Settings from the environment and `.env`, described once in VARIABLES, validated before any work."""

from .docs import env_example, readme_table
from .parsers import parse_bool
from .raw import RawConfig, Source, read_raw_config
from .secret import Secret, mask_url_password
from .settings import Problem, Settings, config_problems, load_settings, validate
from .variables import DELIVERY_FLAGS, VARIABLES, VARIABLES_BY_NAME, Variable, mask

__all__ = [
    "DELIVERY_FLAGS", "VARIABLES", "VARIABLES_BY_NAME", "Problem", "RawConfig", "Secret", "Settings", "Source",
    "Variable", "config_problems", "env_example", "load_settings", "mask", "mask_url_password", "parse_bool",
    "read_raw_config", "readme_table", "validate",
]
