"""The package version (as pyproject.toml), where any module can read it without importing the package."""

__version__ = "0.1.0"
