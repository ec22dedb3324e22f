"""Flask example: see README.md."""
