"""Unit tests of the mixin modules."""
