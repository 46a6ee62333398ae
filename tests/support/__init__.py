"""Helpers shared by tests: real misbehaving servers."""
