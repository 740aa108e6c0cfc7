"""Model providers against fake Messages and Chat Completions APIs on loopback, and the scripted model."""
