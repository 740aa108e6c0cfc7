"""The brain: the turn loop, model providers, tool routing, offload and governance."""
