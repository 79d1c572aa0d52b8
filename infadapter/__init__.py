"""infadapter: accuracy-aware, latency-SLO-driven autoscaling of ML inference model variants."""

from __future__ import annotations


def version() -> str:
    """This copy's version: the installed distribution's metadata, or in a checkout pyproject.toml's.

    The checkout reads pyproject.toml (the one place the version is written, and what a build stamps
    into the metadata) rather than ``importlib.metadata``: a venv may hold another installed copy whose
    metadata would describe that copy, not the code running.
    """
    from infadapter import paths

    if paths.INSTALLED:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as dist_version

        try:
            return dist_version("infadapter")
        except PackageNotFoundError:  # the package folder copied somewhere without its metadata
            return "unknown"
    import tomllib

    with (paths.ROOT / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def __getattr__(name: str) -> str:
    # Read on first use only: every CLI call imports this package, few ask for the version.
    if name == "__version__":
        return version()
    raise AttributeError(f"module 'infadapter' has no attribute {name!r}")
