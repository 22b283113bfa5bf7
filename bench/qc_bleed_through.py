"""Why the stain QC does not check bleed-through: clean co-expressed markers look like a copy.

    python bench/qc_bleed_through.py

A marker m that received a share of another marker s (spectral spillover, isotope impurity)
carries a floor proportional to s wherever s is bright. The test that suggests itself: at the
2% brightest pixels of s (smoothed 1.5 px), the 10th percentile of m / s, times the mean of s
over the mean of m, is the share of m's signal that a constant copy of s would explain. This
script prints that share for the most copy-like clean pairs of each CALIBRATION field of
bench/qc_fields.py and for two sabotaged pairs per field (20% of one random marker's counts
added to another, binomially). Clean co-expressed or nested markers (CK7 in PanKRT, SMA in
Vimentin) reach shares as high as real copies, so no threshold separates them without the
panel's spillover matrix. Exploration: nothing here is shipped.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

import qc_fields  # noqa: E402
from napari_virtual_stain.tasks.qc_checks import is_marker, signal_of, thresholds  # noqa: E402


def copy_shares(stack, names, min_px):
    """``{(receiver, source): share}`` over the markers with at least ``min_px`` signal pixels."""
    smooth = {}
    for i, name in enumerate(names):
        if not is_marker(name):
            continue
        s, _, noise = signal_of(stack[i], 1.0)
        s = np.clip(s - 3 * noise, 0, None)  # above the noise too: camera noise is not a copy
        if (s > 0).sum() >= min_px:
            smooth[i] = ndimage.gaussian_filter(s, 1.5)
    out = {}
    for j, source in smooth.items():
        bright = source >= np.quantile(source[source > 0], 0.98)
        for i, receiver in smooth.items():
            if i != j:
                floor = np.quantile(receiver[bright] / source[bright], 0.1)
                out[(names[i], names[j])] = float(floor * source.mean() / max(receiver.mean(), 1e-12))
    return out


def main():
    min_px = thresholds()["min_signal_px"]
    print("| field | most copy-like clean pairs (receiver <- source: share) | 20% added (share; reverse) |")
    print("|---|---|---|")
    for field in qc_fields.CALIBRATION:
        stack, names = qc_fields.load_field(field)
        clean = copy_shares(stack, names, min_px)
        top = sorted(clean.items(), key=lambda kv: -kv[1])[:3]
        rng = np.random.default_rng(0)
        markers = [n for n in names if is_marker(n)]
        added = []
        for _ in range(2):
            a, b = (markers[k] for k in rng.choice(len(markers), 2, replace=False))
            bad = stack.astype(np.int64)
            bad[names.index(a)] += rng.binomial(stack[names.index(b)].astype(np.int64), 0.2)
            shares = copy_shares(bad, names, min_px)
            added.append(f"{a} <- {b}: {shares.get((a, b), float('nan')):.2f}; {shares.get((b, a), float('nan')):.2f}")
        print(f"| {field} | {', '.join(f'{r} <- {s}: {v:.2f}' for (r, s), v in top)} | {', '.join(added)} |")


if __name__ == "__main__":
    main()
