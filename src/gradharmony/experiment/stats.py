"""Statistics over training seeds: mean ± sample std and the paired 95 % t-interval of a
difference (no SciPy: Student's t quantiles for 1–30 degrees of freedom are tabulated).

Example:
    >>> mean_std([1.0, 2.0, 3.0])
    (2.0, 1.0)
    >>> lo, hi = paired_interval([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    >>> round(lo, 3), round(hi, 3)
    (-0.484, 4.484)
"""

from __future__ import annotations

import math

#: Student's t quantile 0.975 (two-sided 95 %) for df = 1, 2, ..., 30
T975 = (12.7062047, 4.3026527, 3.1824463, 2.7764451, 2.5705818, 2.4469119, 2.3646243,
        2.3060041, 2.2621572, 2.2281389, 2.2009852, 2.1788128, 2.1603687, 2.1447867,
        2.1314495, 2.1199053, 2.1098156, 2.1009220, 2.0930241, 2.0859634, 2.0796138,
        2.0738731, 2.0686576, 2.0638986, 2.0595386, 2.0555294, 2.0518305, 2.0484071,
        2.0452296, 2.0422725)


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (1–30).

    Example:
        >>> t975(2)
        4.3026527
    """
    if not 1 <= int(df) <= len(T975) or int(df) != df:
        raise ValueError(f"t975: degrees of freedom must be an integer in 1..{len(T975)}, "
                         f"got {df!r}")
    return T975[int(df) - 1]


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (``nan`` for fewer than two values).

    Example:
        >>> mean_std([4.0])
        (4.0, nan)
    """
    v = [float(x) for x in values]
    if not v:
        return float("nan"), float("nan")
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, float("nan")
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


def paired_interval(a, b) -> tuple[float, float]:
    """The 95 % t-interval of the mean of ``a[i] - b[i]`` (pairs: the same seed); ``(nan,
    nan)`` for fewer than two pairs.

    Example:
        >>> [round(x, 4) for x in paired_interval([2.0, 4.0], [1.0, 1.0])]
        [-10.7062, 14.7062]
    """
    d = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    if len(d) < 2:
        return float("nan"), float("nan")
    m, s = mean_std(d)
    half = t975(len(d) - 1) * s / math.sqrt(len(d))
    return m - half, m + half


def excludes_zero(interval: tuple[float, float]) -> int:
    """``+1`` when the interval lies above 0, ``-1`` below 0, ``0`` when it holds 0 or is
    undefined: NaN, or of zero width (identical per-seed differences, as a rank metric on a
    few hundred clips gives; no spread was measured, so it cannot be exceeded).

    Example:
        >>> excludes_zero((0.5, 2.0)), excludes_zero((-1.0, 1.0)), excludes_zero((-2, -1))
        (1, 0, -1)
        >>> excludes_zero((0.2, 0.2))
        0
    """
    lo, hi = interval
    if not hi - lo > 1e-9 * max(1.0, abs(lo), abs(hi)):  # zero width up to rounding
        return 0
    if lo > 0:
        return 1
    if hi < 0:
        return -1
    return 0
