"""``virtual-stain demo``: napari with a sample label-free image and our docks, ready to Run.

``--headless`` does the same work without a window: it stains the sample with the
bundled model and prints how close the prediction is to the sample's true fluorescence
(Pearson correlation per channel, against the trivial baseline of the input itself).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

DOCKS = [("Virtual Stain", "VirtualStainWidget", "stain_widget"),
         ("Fine-tune", "FineTuneWidget", "finetune_widget")]


def register(sub) -> None:
    p = sub.add_parser("demo", help="open napari with a sample image and the Virtual Stain dock")
    p.add_argument("--sample", default="label_free_2d", choices=["label_free_2d", "label_free_3d"],
                   help="which synthetic sample to open")
    p.add_argument("--headless", action="store_true",
                   help="no window: stain the sample with the bundled model and print scores")
    p.set_defaults(func=run)


def _pcc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def run_headless(sample: str) -> int:
    from ..engine.predictor import Predictor
    from ..io import sample_data
    from ..models.registry import load_model
    from ..tasks.stain import run_stain
    from .progress import TextProgress

    layers = getattr(sample_data, f"sample_{sample}")()
    by_name = {kw["name"]: data for data, kw, _ in layers}
    image_name = next(n for n in by_name if "brightfield" in n.lower() or "label" in n.lower())
    model_name = "demo-3d-nuclei-membrane" if sample.endswith("3d") else "demo-2d-nuclei-membrane"
    model, card = load_model(model_name)
    result = run_stain(Predictor(model, card), by_name[image_name], name=image_name,
                       progress=TextProgress(f"{model_name} on {image_name}"))
    print(f"{'channel':<10} {'PCC model':>10} {'PCC input':>10}")
    for i, channel in enumerate(result.channels):
        truth = next((d for n, d in by_name.items() if channel in n.lower()), None)
        if truth is None:
            continue
        print(f"{channel:<10} {_pcc(result.data[i], truth):>10.3f} {_pcc(np.asarray(by_name[image_name], float), truth):>10.3f}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.headless:
        return run_headless(args.sample)
    import napari

    viewer = napari.Viewer(title="napari-virtual-stain demo")
    viewer.open_sample("napari-virtual-stain", args.sample)
    for title, cls, module in DOCKS:
        mod = __import__(f"napari_virtual_stain.widgets.{module}", fromlist=[cls])
        viewer.window.add_dock_widget(getattr(mod, cls)(viewer), name=title, area="right")
    print("napari is open: choose 'current view' or 'whole image / stack' and press Run.", file=sys.stderr)
    napari.run()
    return 0
