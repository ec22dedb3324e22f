"""FastAPI example: see README.md."""
