"""Fuzzing and fault injection (docs/RELIABILITY.md)."""
