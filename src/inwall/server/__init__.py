"""The control-plane program: settings, composition and lifecycle of ``inwall server``."""
