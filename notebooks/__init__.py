"""The papermill notebooks, shipped as package data (see notebooks/README.md)."""
