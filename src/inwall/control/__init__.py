"""The control plane's domain layer: resources, the work queue, the event log and its bus."""
