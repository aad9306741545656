"""l2m_plugin: L2M / L2M++ dense feature matching (Lift to Match, ICCV 2025).

Public API::

    from l2m_plugin import L2M, MatcherConfig
    model = L2M.from_pretrained("l2mpp-v2")            # or a local path / state dict
    out = model.match("a.jpg", "b.jpg")                 # dense warp0 / certainty0 ...
    m = model.sample(out, num=5000, generator=torch.Generator().manual_seed(0))

Nothing is downloaded at import or at model construction.
"""

from l2m_plugin.config import PRESETS, MatcherConfig
from l2m_plugin.models.matcher import L2M, load_matcher

__version__ = "0.1.0"
__all__ = ["L2M", "MatcherConfig", "PRESETS", "load_matcher", "__version__"]
