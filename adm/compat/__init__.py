"""Compatibility layers for code written against other ADM implementations."""
