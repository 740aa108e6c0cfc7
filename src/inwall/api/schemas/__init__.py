"""Request bodies, validated strictly: an unknown field is a 400, never silently dropped.

The shapes mirror the ``*_params.py`` TypedDicts of the official ``anthropic``
SDK, which is the wire specification. Responses are built by the domain layer
in the SDK's response shapes (see ``inwall.agent.config``).
"""
