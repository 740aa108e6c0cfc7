"""The HTTP surface: the Managed Agents REST API plus inwall's own ``/v1/inwall`` endpoints."""
