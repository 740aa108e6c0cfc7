"""Tests for the brain: the turn loop and the model providers."""
