"""inwall: agents whose hands stay inside your walls.

Three programs share this package: the control plane (`inwall server`), the
environment worker (`inwall worker`) and the tunnel gateway (`inwall gateway`).
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
