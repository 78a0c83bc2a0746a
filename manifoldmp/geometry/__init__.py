"""Intrinsic and embedded geometric quantities."""
