"""vrclip.edge: the edge runtime core (config, geometry, sensors, simulators, imaging, recordings).

This package must never import torch: the edge box runs without it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vrclip-edge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
