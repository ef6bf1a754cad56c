"""inrflow: flow matching on coordinate-value pairs (INRFlow) with fused C++/CUDA kernels.

Importing the package loads the compiled extension ``inrflow._C`` when it was built; otherwise the
ops fall back to pure-PyTorch references and one :class:`ExtensionWarning` says why.
"""

from __future__ import annotations

from inrflow import nvtx, ops
from inrflow._extension import ExtensionWarning

__all__ = ["ExtensionWarning", "nvtx", "ops"]
__version__ = "0.1.0"
