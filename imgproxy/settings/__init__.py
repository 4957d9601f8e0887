"""One frozen settings object, read from a TOML file and ``IMGPROXY_*`` variables.

Precedence, lowest first: defaults, the config file, the environment, explicit
overrides (command-line flags). Every value is validated once, here; a bad value
raises :class:`SettingsError` naming the key, and the service does not start.
"""

from .loading import load_settings
from .model import Settings, SettingsError

__all__ = ["Settings", "SettingsError", "load_settings"]
