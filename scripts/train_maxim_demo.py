"""Train demo MAXIM imputers and score them against BL-Zero and BL-Mean on held-out data.

Two datasets:

* ``synthetic``: the synthetic multiplex sample (io.synthetic_multiplex, MIBI-like counts
  with known marker relationships). Trained on one field (seed 0); scored on the held-out
  region of that field (the last 15% of rows, never seen in training) and on a second,
  independent field (seed 1).
* ``deepliif``: the real co-registered 4-plex of ../shared/data/deepliif-sample/train
  (hematoxylin, DAPI, Lap2, Ki67 panels). Trained on Lung1; scored on its held-out rows and
  on Bladder1 (another tissue).

Then a QC check with the trained imputers: the held-out field as acquired (no marker
should be flagged), and with one marker blanked / noise-filled / shifted / dimmed, in
whole and in a region (that marker, and only it, should be flagged).

    python scripts/train_maxim_demo.py --out /tmp/maxim-demo --steps 300
Prints markdown tables and writes ``results.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from napari_virtual_stain.tasks.maxim import load_imputers
from napari_virtual_stain.tasks.maxim_qc import run_qc
from napari_virtual_stain.tasks.region import Region
from napari_virtual_stain.training.datasets import split_regions
from napari_virtual_stain.training.imputers import ImputerConfig, heldout_scores, train_imputers

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def synthetic_fields(size: int):
    from napari_virtual_stain.io.synthetic_multiplex import make_multiplex

    a = make_multiplex((size, size), seed=0)
    b = make_multiplex((size, size), seed=1)
    return a["image"], b["image"], list(a["channel_names"])


def deepliif_fields():
    from napari_virtual_stain.io.deepliif_panels import read_panels

    def four_plex(path):
        p = read_panels(path)
        hema = 255.0 - p.hematoxylin.astype(np.float32).mean(-1)  # blue-on-white rendering -> stain amount
        dapi = p.dapi.astype(np.float32).mean(-1)
        lap2 = p.lap2[..., 1].astype(np.float32)  # green rendering
        ki67 = p.marker.astype(np.float32).mean(-1)
        return np.stack([hema, dapi, lap2, ki67])

    folder = DATA / "deepliif-sample" / "train"
    return four_plex(folder / "Lung1.png"), four_plex(folder / "Bladder1.png"), ["Hematoxylin", "DAPI", "Lap2", "Ki67"]


def perturb(stack, index, kind, rng, region):
    out = stack.copy()
    c = out[index]
    target = c[region] if region is not None else c
    if kind == "blank":
        target[...] = 0
    elif kind == "noise":
        target[...] = rng.uniform(c.min(), np.percentile(c, 99.8), target.shape)
    elif kind == "shift":
        target[...] = np.roll(target, (25, 17), axis=(0, 1))
    elif kind == "dim":
        target *= 0.2
    return out


def fmt(v):
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"


def run_dataset(name, train, other, names, targets, config, out_dir, qc_marker, reuse=False):
    print(f"\n## {name}: train {train.shape}, markers {', '.join(names)}; training {', '.join(targets)}", flush=True)
    start = time.perf_counter()

    printed = set()

    def progress(done, total):
        if done % 1000 == 0 and done not in printed:
            printed.add(done)
            print(f"  {done / 1000:.0f}/{total / 1000:.0f} markers done ({time.perf_counter() - start:.0f}s)", flush=True)

    if reuse and list((out_dir / name).glob("*.pt")):
        # Models from an earlier run: score them again with this version of the code
        # (the cards' held-out scores are refreshed in memory, e.g. the leave-one-out ones).
        imputers = load_imputers(out_dir / name)
        _, val = split_regions(train.shape[1:], (config.patch, config.patch), config.val_fraction)
        val_region = Region(tuple(v.start for v in val), tuple(v.stop for v in val))
        heldout = {}
        for marker, (model, card) in imputers.items():
            heldout[marker] = heldout_scores(model, card, train, names, val_region, device=config.device)
            card.scores.update(heldout[marker])
        runs = {m: (heldout[m], c.training.get("steps"), c.training.get("seconds")) for m, (_, c) in imputers.items()}
    else:
        run = train_imputers(train, names, out_dir / name, markers=targets, config=config, progress=progress)
        imputers = load_imputers(out_dir / name)
        runs = {m: (r.scores, r.steps, round(r.seconds, 1)) for m, r in run.results.items()}
    rows = {}
    whole_other = Region.whole(other.shape[1:])
    for marker, (scores, steps, seconds) in runs.items():
        model, card = imputers[marker]
        rows[marker] = {"heldout_region": scores,
                        "other_field": heldout_scores(model, card, other, names, whole_other, device=config.device),
                        "steps": steps, "seconds": seconds}
    print("\n| marker | held-out on | MAXIM SSIM | BL-Mean SSIM | BL-Zero SSIM | MAXIM MAE | BL-Mean MAE | BL-Zero MAE | MAXIM PCC | BL-Mean PCC |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for marker, r in rows.items():
        for where in ("heldout_region", "other_field"):
            s = r[where]
            print(f"| {marker} | {where.replace('_', ' ')} | {fmt(s['val']['ssim'])} | {fmt(s['bl_mean']['ssim'])} | "
                  f"{fmt(s['bl_zero']['ssim'])} | {fmt(s['val']['mae'])} | {fmt(s['bl_mean']['mae'])} | "
                  f"{fmt(s['bl_zero']['mae'])} | {fmt(s['val']['pcc'])} | {fmt(s['bl_mean']['pcc'])} |")

    # QC realism check on the other field
    rng = np.random.default_rng(0)
    h, w = other.shape[1:]
    region = (slice(h // 4, h // 4 + h // 4), slice(w // 3, w // 3 + w // 4))
    index = names.index(qc_marker)
    cases = [("as acquired", other)]
    for kind in ("blank", "noise", "shift", "dim"):
        cases.append((f"{qc_marker} {kind}, whole", perturb(other, index, kind, rng, None)))
    for kind in ("blank", "noise", "dim"):
        cases.append((f"{qc_marker} {kind}, region", perturb(other, index, kind, rng, region)))
    qc_rows = []
    print(f"\nQC with the trained imputers on the other field ({qc_marker} perturbed; region rows "
          f"{region[0].start}-{region[0].stop}, cols {region[1].start}-{region[1].stop}):\n")
    print("| case | flagged | boxes of the perturbed marker | expected |")
    print("|---|---|---|---|")
    for label, stack in cases:
        report = run_qc(stack, names, imputers, device=config.device)
        boxes = [(b.y0, b.x0, b.y1, b.x1) for b in report.markers[qc_marker].regions] if qc_marker in report.markers else []
        expected = "none" if label == "as acquired" else qc_marker
        qc_rows.append({"case": label, "flagged": report.flagged, "boxes": boxes,
                        "reasons": {m: q.reasons for m, q in report.markers.items() if q.reasons}})
        print(f"| {label} | {', '.join(report.flagged) or 'none'} | {boxes[:3]} | {expected} |", flush=True)
    return {"markers": rows, "qc": qc_rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/maxim-demo")
    p.add_argument("--datasets", nargs="+", default=["synthetic", "deepliif"])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--minutes", type=float, default=None, help="per marker")
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--base", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--synthetic-size", type=int, default=256)
    p.add_argument("--reuse", action="store_true", help="score the models already in --out instead of training")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 is several times faster on a shared, oversubscribed machine)")
    p.add_argument("--synthetic-markers", nargs="+", default=["DAPI", "Histone H3", "Ki67", "CD45"])
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    out = Path(args.out)
    config = ImputerConfig(steps=args.steps, max_minutes=args.minutes, patch=args.patch, base=args.base,
                           max_width=8 * args.base, batch_size=args.batch_size, val_every=max(25, args.steps // 6),
                           patience=4, device="cpu")
    results = {"config": vars(args)}
    if "synthetic" in args.datasets:
        train, other, names = synthetic_fields(args.synthetic_size)
        results["synthetic"] = run_dataset("synthetic", train, other, names, args.synthetic_markers, config, out,
                                           qc_marker="Histone H3", reuse=args.reuse)
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    if "deepliif" in args.datasets:
        train, other, names = deepliif_fields()
        results["deepliif"] = run_dataset("deepliif", train, other, names, names, config, out, qc_marker="Lap2",
                                          reuse=args.reuse)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"\nwrote {out / 'results.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
