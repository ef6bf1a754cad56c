"""The real digits: scikit-learn's bundled ``load_digits`` (1,797 handwritten 8 x 8 digits, 16 grey
levels), the raw data of the ``digits`` demo. The dataset the trainer draws from is
:class:`inrflow.data.demo.DigitsDataset`; the classifier that scores generated digits against
these is :mod:`inrflow.metrics.digits`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["load_real_digits"]


def load_real_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as float64 ``[1797, 8, 8]`` images in [0, 1] and int64 labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is in the [eval] extra
        raise ImportError(
            "the digits metrics need scikit-learn: pip install 'inrflow[eval]'"
        ) from exc
    data = load_digits()
    return data.images.astype(np.float64) / 16.0, data.target.astype(np.int64)
