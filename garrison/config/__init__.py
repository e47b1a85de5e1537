"""Settings: the only place in garrison that reads the environment."""

from garrison.config.settings import Settings

__all__ = ["Settings"]
