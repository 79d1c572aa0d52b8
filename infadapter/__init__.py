"""infadapter: accuracy-aware, latency-SLO-driven autoscaling of ML inference model variants."""

from __future__ import annotations


def version() -> str:
    """This copy's version: the installed distribution's metadata, or in a checkout pyproject.toml's.

    A checkout reads pyproject.toml (the one place the version is written, and what a build stamps into
    the metadata) rather than ``importlib.metadata``: the venv may hold another installed copy, whose
    metadata describes that copy, not the code running. A checkout-shaped copy without pyproject.toml
    falls back to the metadata, and a copy with neither says "unknown".
    """
    from infadapter import paths

    pyproject = paths.ROOT / "pyproject.toml"
    if not paths.INSTALLED and pyproject.is_file():
        import tomllib

        with pyproject.open("rb") as f:
            return str(tomllib.load(f)["project"]["version"])
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("infadapter")
    except PackageNotFoundError:  # the package folder copied somewhere without its metadata
        return "unknown"


def __getattr__(name: str) -> str:
    # Read on first use only: every CLI call imports this package, few ask for the version.
    if name == "__version__":
        return version()
    raise AttributeError(f"module 'infadapter' has no attribute {name!r}")
