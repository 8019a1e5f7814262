"""slmnet's version and the ``version_key`` its weights carry.

The subnet owner raises the chain's ``WeightsVersionKey`` to require an upgrade: the chain
refuses weights with an older key, and a validator refuses to start below it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def version_key(text: str) -> int:
    """``MAJOR.MINOR.PATCH`` as one integer, ``MAJOR·10⁶ + MINOR·10³ + PATCH`` (0.2.1 → 2001)."""
    parts = [int(p) for p in text.split("+")[0].split(".")[:3]]
    major, minor, patch = (parts + [0, 0, 0])[:3]
    if not (0 <= minor < 1000 and 0 <= patch < 1000):
        raise ValueError(f"version {text!r}: minor and patch must be below 1000")
    return major * 1_000_000 + minor * 1_000 + patch


try:
    __version__ = version("slmnet")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0"
VERSION_KEY = version_key(__version__)
