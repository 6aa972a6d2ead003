"""Mixin modules copied verbatim into rendered nodes. Each is independent of the others."""
