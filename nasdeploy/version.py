"""The package version: one place, imported by everything that records it (no package-init import)."""

__version__ = "0.1.0"
