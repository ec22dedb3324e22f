"""The package version, apart so that the exporters can name it without importing the package root."""

__version__ = "0.2.0"
