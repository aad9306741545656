"""Network modules of the L2M matcher (encoder, decoder, full matcher)."""

from l2m_plugin.models.matcher import L2M

__all__ = ["L2M"]
