"""Packaging glue that pyproject.toml cannot express: the top-level notebooks/ folder ships inside
the wheel as the package ``hpa_kernel.notebooks``, so that ``hpa-kernel notebooks --out DIR`` can
write them out after a plain ``pip install``."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["hpa_kernel", "hpa_kernel.*"]) + ["hpa_kernel.notebooks"],
    package_dir={"hpa_kernel.notebooks": "notebooks"},
)
