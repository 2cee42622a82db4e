"""Paired statistics for `lmjax compare`: pure NumPy/SciPy, no report I/O.

Conventions shared by every function here:

- A pair is (reference, model); differences are `model - reference`, so a
  negative difference means the model erred less.
- `alternative`: "two-sided"; "less" = the model's errors are smaller than the
  reference's; "greater" = they are larger.
- NaN means "no value, leave the pair out"; +inf means "missed, worse than any
  found error" (see `apply_misses`).
- A test that cannot be run (fewer than two pairs, every difference zero, no
  discordant class pair) has p = NaN and is left out of its correction family.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

ALTERNATIVES = ("two-sided", "less", "greater")
CORRECTIONS = ("holm", "bonferroni", "none")
MISSES = ("penalize", "cap", "drop")
# paper002 marks the comparisons against each other method with one symbol each,
# in this order; past the paper's three, further ASCII symbols follow (none of
# them a letter, so the `b` of bold in text output stays unambiguous).
PAPER002_SYMBOLS = ("*", "+", "^", "#", "&", "%", "@", "~")


def _check(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; use one of {', '.join(allowed)}")


# ---------------------------------------------------------------- corrections


def bonferroni(p: Sequence[float]) -> np.ndarray:
    """Bonferroni-adjusted p-values `min(1, m p)`; m counts the finite p only."""
    p = np.asarray(p, np.float64)
    m = int(np.isfinite(p).sum())
    return np.minimum(1.0, p * m)  # NaN stays NaN


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values over the finite entries (NaN stays NaN).

    The i-th smallest of m p-values becomes `max_{j<=i} min(1, (m - j + 1) p_(j))`,
    so rejecting where the adjusted p < alpha is Holm's procedure at level alpha.
    """
    p = np.asarray(p, np.float64)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    order = idx[np.argsort(p[idx], kind="stable")]
    m = order.size
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)  # keeps the adjusted p monotone
    return out


def adjust(p: Sequence[float], method: str) -> np.ndarray:
    """p-values adjusted by `method` ("holm", "bonferroni" or "none")."""
    _check("correction", method, CORRECTIONS)
    if method == "holm":
        return holm(p)
    if method == "bonferroni":
        return bonferroni(p)
    return np.asarray(p, np.float64).copy()


def correct_family(tests: Sequence[dict[str, Any]], method: str) -> int:
    """Adds `p_corrected` to every test (a dict with `p`) of one family, in place.

    Returns:
      The family's size m: the tests that could be run (finite p).
    """
    adjusted = adjust([t["p"] for t in tests], method)
    for t, p in zip(tests, adjusted, strict=True):
        t["p_corrected"] = float(p)
    return int(np.isfinite([t["p"] for t in tests]).sum())


# ---------------------------------------------------------------- misses


def apply_misses(
    ref: np.ndarray, model: np.ndarray, policy: str, cap: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pairs after the missed-landmark policy; inputs are errors, NaN where missing.

    A pair with both values missing (not annotated, or both models missed it)
    holds no evidence either way and becomes NaN on both sides under every
    policy. A pair with exactly one missing value is a miss of that model:
    "penalize" sets it to +inf (a loss against any found error; `signed_rank`
    turns it into a finite value above every found one), "cap" sets it to `cap`,
    "drop" leaves the pair out (NaN on both sides).

    Returns:
      `(ref, model, ref_missed, model_missed)`: the arrays after the policy, and
      boolean masks of the one-sided misses of each side.
    """
    _check("misses policy", policy, MISSES)
    ref, model = np.asarray(ref, np.float64), np.asarray(model, np.float64)
    r_ok, m_ok = np.isfinite(ref), np.isfinite(model)
    ref_missed, model_missed = m_ok & ~r_ok, r_ok & ~m_ok
    if policy == "cap" and (cap is None or not np.isfinite(cap) or cap < 0):
        raise ValueError("--misses=cap needs --error_cap=MM, a finite error >= 0")
    fill = {"penalize": np.inf, "cap": cap, "drop": np.nan}[policy]
    ref = np.where(r_ok, ref, np.where(ref_missed, fill, np.nan))
    model = np.where(m_ok, model, np.where(model_missed, fill, np.nan))
    left_out = np.isnan(ref) | np.isnan(model)
    ref[left_out], model[left_out] = np.nan, np.nan
    return ref, model, ref_missed, model_missed


def row_means(x: np.ndarray) -> np.ndarray:
    """Mean of each row over its non-NaN entries (+inf stays +inf), NaN if none."""
    x = np.asarray(x, np.float64)
    count = (~np.isnan(x)).sum(axis=1)
    total = np.where(np.isnan(x), 0.0, x).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


# ---------------------------------------------------------------- effect size


def bootstrap_ci(
    values: np.ndarray,
    *,
    statistic: str = "median",
    resamples: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the median (or mean) of `values`.

    Resamples the pairs with replacement, `resamples` times from a generator
    seeded with `seed`, so the interval is reproducible. The bounds are order
    statistics (numpy's "lower"/"higher" quantiles) rather than interpolations,
    so a bound among infinite medians (penalized misses) stays infinite.
    """
    v = np.asarray(values, np.float64)
    if v.size == 0 or resamples < 1:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    reduce = np.median if statistic == "median" else np.mean
    stats_ = np.empty(resamples)
    block = max(1, 4_000_000 // v.size)  # bounds memory for large n
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        idx = rng.integers(0, v.size, (stop - start, v.size))
        stats_[start:stop] = reduce(v[idx], axis=1)
    tail = (1.0 - level) / 2
    lo = np.quantile(stats_, tail, method="lower")
    hi = np.quantile(stats_, 1.0 - tail, method="higher")
    return float(lo), float(hi)


# ---------------------------------------------------------------- tests


def signed_rank(
    ref: np.ndarray,
    model: np.ndarray,
    *,
    alternative: str = "two-sided",
    resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Wilcoxon signed-rank test on paired values, `model - ref`.

    NaN pairs are left out. +inf (a penalized miss) is replaced, for the test
    only, by `2 max + 1` over the finite values of both sides, so a pair with one
    miss outranks every pair without, and its sign goes against the side that
    missed; a pair missed on both sides is a zero difference. Zero differences
    are dropped by the test (`zero_method="wilcox"`) but stay in the effect size.

    Returns:
      `n` pairs, `zeros` (zero differences), `statistic`, `p`, `median_difference`
      with its bootstrap `ci` (infinite where misses decide it), and
      `model_lower` (True when the model's ranks are the smaller, None on a tie).
    """
    _check("alternative", alternative, ALTERNATIVES)
    a, b = np.asarray(ref, np.float64).ravel(), np.asarray(model, np.float64).ravel()
    ok = ~(np.isnan(a) | np.isnan(b))
    a, b = a[ok], b[ok]
    with np.errstate(invalid="ignore"):
        d = np.where(a == b, 0.0, b - a)  # inf - inf is a tie, not NaN
    finite = np.concatenate([a[np.isfinite(a)], b[np.isfinite(b)], [0.0]])
    penalty = 2.0 * finite.max() + 1.0
    dt = np.where(np.isinf(b), penalty, b) - np.where(np.isinf(a), penalty, a)
    nz = dt[dt != 0]
    out: dict[str, Any] = {"n": int(d.size), "zeros": int(d.size - nz.size)}
    out["statistic"], out["p"] = float("nan"), float("nan")
    out["median_difference"] = float(np.median(d)) if d.size else float("nan")
    out["ci"] = list(bootstrap_ci(d, resamples=resamples, seed=seed))
    ranks = stats.rankdata(np.abs(nz))
    plus, minus = ranks[nz > 0].sum(), ranks[nz < 0].sum()
    out["model_lower"] = None if plus == minus else bool(plus < minus)
    if nz.size >= 2:
        res = stats.wilcoxon(dt, zero_method="wilcox", alternative=alternative)
        out["statistic"], out["p"] = float(res.statistic), float(res.pvalue)
    return out


def mcnemar_exact(
    ref_correct: np.ndarray,
    model_correct: np.ndarray,
    *,
    alternative: str = "two-sided",
    resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """McNemar's exact test on paired correct/incorrect outcomes.

    Only the discordant pairs count: `ref_only` (the reference right, the model
    wrong) and `model_only`; under the null each is Binomial(ref_only +
    model_only, 1/2). "less" (the model errs less) means model_only > ref_only.
    The effect size is the difference in error rates, model - reference, with
    its bootstrap interval over the pairs.
    """
    _check("alternative", alternative, ALTERNATIVES)
    r = np.asarray(ref_correct, bool).ravel()
    m = np.asarray(model_correct, bool).ravel()
    ref_only, model_only = int((r & ~m).sum()), int((~r & m).sum())
    out: dict[str, Any] = {"n": int(r.size), "ref_only": ref_only, "model_only": model_only}
    out["accuracy_reference"] = float(r.mean()) if r.size else float("nan")
    out["accuracy_model"] = float(m.mean()) if r.size else float("nan")
    d = r.astype(np.float64) - m.astype(np.float64)  # error(model) - error(ref)
    out["error_rate_difference"] = float(d.mean()) if d.size else float("nan")
    out["ci"] = list(bootstrap_ci(d, statistic="mean", resamples=resamples, seed=seed))
    out["model_lower"] = None if ref_only == model_only else model_only > ref_only
    out["p"] = float("nan")
    if ref_only + model_only:
        side = {"two-sided": "two-sided", "less": "greater", "greater": "less"}[alternative]
        out["p"] = float(stats.binomtest(model_only, ref_only + model_only, 0.5, side).pvalue)
    return out


def error_tests(
    ref: np.ndarray,
    model: np.ndarray,
    *,
    alternative: str = "two-sided",
    misses: str = "penalize",
    error_cap: float | None = None,
    resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """The overall and per-landmark tests of one model's `[N, K]` errors (NaN where
    missing) against the reference's, after the `misses` policy (`apply_misses`).

    Overall: `signed_rank` of the image means (`row_means`), paired by image;
    per landmark: `signed_rank` of each column. Every test also counts the
    one-sided misses of each side among its pairs (`missed_reference`,
    `missed_model`), its pairs they `affected` (images overall), and the
    (image, landmark) pairs missing on `both_missing` sides.

    Returns:
      `{"overall": test, "per_landmark": [test per landmark]}`.
    """
    kw = {"alternative": alternative, "resamples": resamples, "seed": seed}
    r, m, rm, mm = apply_misses(ref, model, misses, error_cap)
    both = np.isnan(np.asarray(ref, np.float64)) & np.isnan(np.asarray(model, np.float64))

    def counts(sel: Any, affected: int) -> dict[str, int]:
        return {
            "missed_reference": int(rm[sel].sum()),
            "missed_model": int(mm[sel].sum()),
            "affected": affected,
            "both_missing": int(both[sel].sum()),
        }

    overall = signed_rank(row_means(r), row_means(m), **kw)
    overall.update(counts(Ellipsis, int((rm | mm).any(axis=1).sum())))
    per = []
    for k in range(r.shape[1]):
        t = signed_rank(r[:, k], m[:, k], **kw)
        t.update(counts((slice(None), k), int((rm[:, k] | mm[:, k]).sum())))
        per.append(t)
    return {"overall": overall, "per_landmark": per}


# ---------------------------------------------------------------- marks


def stars(p: float) -> str:
    """`*` p < 0.05, `**` p < 0.01, `***` p < 0.001; nothing for NaN."""
    if not np.isfinite(p):
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


def paper002_marks(tests: Sequence[dict[str, Any]], alpha: float = 0.05) -> dict[str, Any]:
    """The lower-limb paper's (002) marks for one row of a table.

    `tests` holds each compared model's test against the reference on this row,
    in column order (raw `p`, `model_lower`). As in the paper:

    - bold, at `alpha` on the raw p: a model whose errors are significantly lower
      than the reference's; the reference when its errors are significantly lower
      than every compared model's (with one model: the better of the two);
    - symbols on the reference, one per model in `PAPER002_SYMBOLS` order, where
      raw p < alpha / m for m compared models (Bonferroni over the models, the
      paper's 0.05 / 3 = 0.016).

    Returns:
      `{"reference": {"bold", "symbols"}, "models": [{"bold", "symbols" (empty),
      "reference_symbol" (the symbol this model puts on the reference)}, ...]}`.
    """
    m = len(tests)
    sig = [np.isfinite(t["p"]) and t["p"] < alpha for t in tests]
    strong = [np.isfinite(t["p"]) and t["p"] < alpha / max(m, 1) for t in tests]
    models = [
        {
            "bold": s and t["model_lower"] is True,
            "symbols": "",
            "reference_symbol": paper002_symbol(i) if k else "",
        }
        for i, (s, k, t) in enumerate(zip(sig, strong, tests, strict=True))
    ]
    lower = [s and t["model_lower"] is False for s, t in zip(sig, tests, strict=True)]
    reference = {
        "bold": m > 0 and all(lower),
        "symbols": "".join(c["reference_symbol"] for c in models),
    }
    return {"reference": reference, "models": models}


def paper002_symbol(i: int) -> str:
    """The mark of the i-th (0-based) compared model in paper002 style."""
    n = len(PAPER002_SYMBOLS)
    return PAPER002_SYMBOLS[i % n] * (1 + i // n)  # past the list: doubled, tripled


def mark_row(tests: Sequence[dict[str, Any]], style: str) -> list[dict[str, Any]]:
    """Marks of one table row, `{"bold", "symbols"}` for the reference and then each
    model; also sets each test's `marks`, the string its line in a test table shows.

    "stars": `stars` of each test's `p_corrected` on the model; "paper002":
    `paper002_marks`, and a test's line shows `b` when the model is bold plus the
    symbol it puts on the reference.
    """
    if style == "paper002":
        got = paper002_marks(tests)
        for t, cell in zip(tests, got["models"], strict=True):
            t["marks"] = ("b" if cell["bold"] else "") + cell["reference_symbol"]
        return [got["reference"], *got["models"]]
    for t in tests:
        t["marks"] = stars(t["p_corrected"])
    return [{"bold": False, "symbols": ""}] + [
        {"bold": False, "symbols": t["marks"]} for t in tests
    ]
