"""Small real MCP servers the gateway tests talk to."""
