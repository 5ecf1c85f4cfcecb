"""Agent Platform: a multi-tenant AI agent runtime."""

__version__ = "0.1.0"
