"""Exceptions of :mod:`l2m_plugin.synthesis`."""

from __future__ import annotations

__all__ = ["SynthesisError", "DepthFileError", "BackendUnavailableError", "ConfigMismatchError"]


class SynthesisError(RuntimeError):
    """A pair cannot be made from this input (the message says why and how to fix it)."""


class DepthFileError(SynthesisError, ValueError):
    """A depth/disparity file is missing, unreadable or of the wrong shape (names the file)."""


class BackendUnavailableError(SynthesisError, ImportError):
    """An optional backend (``diffusers``, ``transformers``) or its weights are missing.

    The message names the package or model and how to get it.
    """


class ConfigMismatchError(SynthesisError, ValueError):
    """An output folder was made with another configuration (rerun with ``--overwrite``)."""
