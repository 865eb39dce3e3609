"""Configuration: the environment variables' schema, example env files, deployment examples."""

from config.settings import ConfigError, Registry, Settings, load

__all__ = ["ConfigError", "Registry", "Settings", "load"]
