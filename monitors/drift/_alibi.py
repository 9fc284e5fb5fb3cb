"""The one place alibi-detect is imported (BSL-licensed from 0.11.5 on; only the adapters use it).

alibi-detect 0.13 decorates its distance kernels with ``torch.jit.script``,
which recent torch releases deprecate with a warning at import time; that
warning alone is silenced here, so the process's warning filters stay strict.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=DeprecationWarning)
    from alibi_detect.cd import KSDrift
    from alibi_detect.cd.pytorch.lsdd_online import LSDDDriftOnlineTorch
    from alibi_detect.cd.pytorch.mmd import MMDDriftTorch
    from alibi_detect.cd.pytorch.mmd_online import MMDDriftOnlineTorch
    from alibi_detect.utils.pytorch import quantile, zero_diag
    from alibi_detect.utils.pytorch.distance import mmd2_from_kernel_matrix

__all__ = [
    "KSDrift",
    "LSDDDriftOnlineTorch",
    "MMDDriftOnlineTorch",
    "MMDDriftTorch",
    "mmd2_from_kernel_matrix",
    "quantile",
    "zero_diag",
]
