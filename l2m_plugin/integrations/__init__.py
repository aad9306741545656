"""Adapters to other libraries (hloc, kornia)."""
