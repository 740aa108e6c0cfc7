"""MCP in sessions: the control plane's client side, direct or through a tunnel."""
