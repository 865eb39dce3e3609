"""Configuration: the environment variables' schema, example env files, deployment examples."""

from config.settings import ConfigError, Registry, Settings, configure_logging, load

__all__ = ["ConfigError", "Registry", "Settings", "configure_logging", "load"]
