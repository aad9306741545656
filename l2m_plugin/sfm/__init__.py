"""Structure from motion with dense matches: pairs, matching, tracks, COLMAP (pycolmap) mapping.

Entry point: :func:`l2m_plugin.sfm.pipeline.reconstruct` (``l2m reconstruct``).
"""
