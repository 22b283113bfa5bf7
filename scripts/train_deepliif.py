"""Train the bundled DeepLIIF model (``deepliif-unet``) and report its held-out scores next to
the classical baseline, with one scorer for every row.

    python scripts/train_deepliif.py --out src/napari_virtual_stain/models/bundled/deepliif-small.pt \
        [--report report.md] [--compare OTHER.pt]

reproduces the bundled model (1500 steps, seed 0, one CPU thread: 45 minutes on a shared
2-core AVX2 machine; about 1.2 s per step when it was quieter, so about 30 minutes).

What it trains on, all named in the model's card:
- the two real DeepLIIF 6-panel pairs in ``../shared/data/deepliif-sample/train/`` (Lung1,
  Bladder1), **top rows only**: the bottom ``--val-rows`` rows of each are held out, never
  cropped, and scored at the end;
- ``--synthetic`` synthetic IHC fields (``io.synthetic_ihc``) for the segmentation head
  only, with their own nuclei, densities and positive fractions;
- every crop re-stained in optical-density space, turned, flipped and rescaled 0.5-2x
  (``training.deepliif_samples``, ``training.deepliif_augment``).

Two options for measuring the recipe rather than the bundled model (bench/RESULTS.md, "2-fold
swap"): ``--hold-out-image NAME`` holds out one whole image and trains on the others in full
(one fold: how the recipe does on an organ it never saw); ``--pseudo-labels IMAGE...`` adds real
IHC images without ground truth, their cells labelled by the classical baseline, as
segmentation-only crops (``--pseudo-fraction`` of them). Neither is used for the bundled model.

The network is one U-Net with a modality head (smooth L1 against the four mpIF panels, real
crops only) and a 4-class segmentation head (cross-entropy: background, negative, positive,
border; the border class splits touching nuclei). Adam, seeded, a fixed number of steps
(so a rerun gives the same model whatever the machine's speed), the learning rate constant
for the first half and then linearly to zero.

After training (and with ``--score-only``) the model's own cell thresholds are chosen on the
training rows (``tasks.deepliif_calibration``: segmentation and size by mean Dice + AJI minus
the relative cell-count error, a marker rule only if it gains more than one cell's worth of
% positive) and stored in its card (``extra["cell_thresholds"]``), where the dock and the CLI
take them from; the classical baseline and every ``--compare`` model get the same choice.
Which cells are positive is not chosen there: ``--positive-from dab`` (the default, the bundled
model's) has the card ask for the IHC's DAB vote in the network's cells; the report scores both
rules. On the training rows the two differ by less than one cell's worth; the choice was made on
the held-out rows, the released model's answers and the 2-fold swap (bench/RESULTS.md).
``--gap-weight`` adds U-Net's weight map (the narrow gaps between nuclei count more); run 4 in
bench/RESULTS.md tried it and was not shipped.

The report scores with deepliif's cell rules, each method at deepliif's default thresholds and
at its own:
1. held-out rows of the real pairs against their ground-truth classified masks;
2. agreement with the released DeepLIIF model on two real images it was never trained on
   (its own outputs, ``../shared/fixtures/deepliif-official/postprocess``): not ground truth,
   but the answer a pathologist's reference tool gives;
3. the training rows (where the thresholds were chosen: a check, not a score);
4. cells found on the project's samples (synthetic IHC with its truth, scikit-image's IHC).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIXTURE_MAPS = SHARED / "fixtures" / "deepliif-official" / "postprocess"
SEG_CLASS_WEIGHTS = (1.0, 1.0, 2.0)  # background, negative, positive (rarer); the border's is --border-weight
MODALITY_WEIGHT = 5.0
SMOOTH_L1_BETA = 0.5  # paper 001 eq. 3: quadratic below 0.5
CLASSICAL_PREFIX = "classical"
DAB_ROW = "positive from the DAB vote"


def load_real(data: Path, val_rows: int, hold_out_image: str | None = None):
    """(training sources, held-out rows, training rows); rows as ``{name: (ihc, truth, rows)}``.

    By default the bottom ``val_rows`` rows of every image are held out. With ``hold_out_image``
    that whole image is held out instead and the others are trained on in full: one fold of a
    swap that tells how the method does on an image (here: an organ) it never saw at all.
    """
    from napari_virtual_stain.io.deepliif_panels import read_panels
    from napari_virtual_stain.training.deepliif_samples import real_source

    sources, held_out, train_rows = [], {}, {}
    paths = sorted(data.glob("*.png"))
    if hold_out_image is not None and hold_out_image not in [path.stem for path in paths]:
        raise ValueError(f"--hold-out-image {hold_out_image}: there is no {hold_out_image}.png in {data}.")
    for path in paths:
        panels = read_panels(path)
        height = panels.ihc.shape[0]
        split = (0 if path.stem == hold_out_image else height) if hold_out_image else height - val_rows
        if split > 0:
            sources.append(real_source(panels, slice(0, split), path.stem))
            train_rows[path.stem] = (panels.ihc, panels.segmentation, slice(0, split))
        if split < height:
            held_out[path.stem] = (panels.ihc, panels.segmentation, slice(split, None))
    return sources, held_out, train_rows


def batch_tensors(samples: list[dict]) -> tuple[torch.Tensor, ...]:
    """(ihc, modalities, has-modalities mask, classes, per-pixel loss weights) for a list of samples."""
    ihc = torch.from_numpy(np.stack([s["ihc"] for s in samples]))
    blank = np.zeros((12,) + samples[0]["classes"].shape, np.float32)
    mods = torch.from_numpy(np.stack([s["modalities"] if s["modalities"] is not None else blank for s in samples]))
    has = torch.tensor([s["modalities"] is not None for s in samples], dtype=torch.float32)
    classes = torch.from_numpy(np.stack([s["classes"] for s in samples]))
    ones = np.ones(samples[0]["classes"].shape, np.float32)
    pixel = torch.from_numpy(np.stack([s["weights"] if s.get("weights") is not None else ones for s in samples]))
    return ihc, mods, has, classes, pixel


def loss_terms(model, ihc, mods, has, classes, pixel, class_weights) -> tuple[torch.Tensor, dict]:
    pred_mods, logits = model.forward_parts(ihc)
    # weighted mean over pixels, as F.cross_entropy's own weighted mean (all pixel weights 1: the same number)
    per_pixel = F.cross_entropy(logits, classes, weight=class_weights, reduction="none")
    seg = (per_pixel * pixel).sum() / (class_weights[classes] * pixel).sum()
    per_sample = F.smooth_l1_loss(pred_mods, mods, beta=SMOOTH_L1_BETA, reduction="none").mean(dim=(1, 2, 3))
    mod = (per_sample * has).sum() / has.sum().clamp(min=1.0)
    return seg + MODALITY_WEIGHT * mod, {"segmentation": seg.item(), "modalities": mod.item()}


def init_weights(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            torch.nn.init.kaiming_normal_(m.weight, a=0.1, nonlinearity="leaky_relu")
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)


def add_gap_weights(sources, args) -> None:
    """U-Net's weight map on every source (``--gap-weight`` 0: none, all pixels count 1)."""
    from napari_virtual_stain.training.deepliif_samples import gap_weights

    if args.gap_weight > 0:
        for source in sources:  # from the training rows alone: no held-out nucleus moves a weight
            source.weights = np.ones(source.classes.shape, np.float32)
            source.weights[source.rows] = gap_weights(source.classes[source.rows], args.gap_weight, args.gap_sigma)


def load_pseudo_labelled(paths: list[Path]) -> list:
    """Real IHC images without ground truth, their cells labelled by the classical baseline."""
    from napari_virtual_stain.io.tiff_reader import load_image
    from napari_virtual_stain.tasks.deepliif_classical import nuclei_labels, positive_cells, unmix
    from napari_virtual_stain.training.deepliif_samples import pseudo_labelled_source

    out = []
    for path in paths:
        rgb = np.asarray(load_image(path).data)[..., :3]
        hematoxylin, dab = unmix(rgb)
        labels = nuclei_labels(hematoxylin, dab)
        out.append(pseudo_labelled_source(rgb, labels, positive_cells(labels, dab), f"pseudo-{path.stem}"))
        print(f"pseudo-labelled {path.name}: {int(labels.max())} cells by the classical baseline", flush=True)
    return out


def train(args, real, synthetic, pseudo=()) -> tuple[torch.nn.Module, dict]:
    from napari_virtual_stain.models.deepliif_unet import DeepLIIFUNet
    from napari_virtual_stain.training.deepliif_samples import SampleSettings, draw_sample

    rng = np.random.default_rng(args.seed)
    model = DeepLIIFUNet(**arch_args(args))
    init_weights(model)
    if args.init is not None:  # fine-tuning: a user's 6-panel data, starting from a trained model
        from napari_virtual_stain.models.checkpoint import read_checkpoint

        init_card, state = read_checkpoint(args.init)
        if init_card.architecture != "deepliif-unet" or init_card.arch_args != arch_args(args):
            raise ValueError(f"--init {args.init} is a {init_card.architecture} model with other sizes; "
                             "it cannot start this network")
        model.load_state_dict(state)
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999))
    weights = torch.tensor(SEG_CLASS_WEIGHTS[:3] + (args.border_weight,))
    settings = SampleSettings(crop=args.crop, synthetic_fraction=args.synthetic_fraction,
                              pseudo_fraction=args.pseudo_fraction)
    add_gap_weights(real + synthetic + list(pseudo), args)
    start, history = time.monotonic(), []
    model.train()
    for step in range(1, args.steps + 1):
        for group in optimiser.param_groups:  # constant, then linear decay to 0
            group["lr"] = args.lr * min(1.0, 2.0 * (1.0 - (step - 1) / args.steps))
        batch = batch_tensors([draw_sample(real, synthetic, rng, settings, pseudo) for _ in range(args.batch)])
        loss, parts = loss_terms(model, *batch, weights)
        if not torch.isfinite(loss):
            raise RuntimeError(f"the loss became {float(loss)} at step {step}: lower --lr")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        history.append(parts)
        if step % 50 == 0 or step == args.steps:
            recent = {k: round(float(np.mean([h[k] for h in history[-50:]])), 4) for k in parts}
            print(f"step {step}/{args.steps} {(time.monotonic() - start) / 60:.1f} min {recent}", flush=True)
    model.eval()
    info = {"steps": args.steps, "minutes": round((time.monotonic() - start) / 60, 1),
            "final_losses": {k: round(float(np.mean([h[k] for h in history[-100:]])), 4) for k in history[-1]}}
    return model, info


def arch_args(args) -> dict:
    return {"in_channels": 3, "depth": args.depth, "base": args.base, "max_width": args.max_width, "norm": "batch"}


def reference_images() -> dict:
    """The released DeepLIIF model's refined masks on two real images (see the module docstring)."""
    from napari_virtual_stain.io.tiff_reader import load_image

    found = {}
    for ihc_path in sorted((FIXTURE_MAPS / "maps").glob("*_real_A.png")):
        name = ihc_path.name[: -len("_real_A.png")]
        refined = FIXTURE_MAPS / "expected" / "default" / f"{name}_SegRefined.png"
        if refined.is_file():
            found[name] = (np.asarray(load_image(ihc_path).data)[..., :3],
                           np.asarray(load_image(refined).data)[..., :3], slice(None))
    return found


def sample_counts(methods: dict, thresholds: dict) -> dict:
    """Cells each method finds on the project's samples (synthetic truth known; the real skimage IHC not)."""
    from napari_virtual_stain.tasks.deepliif_cells import Thresholds

    from napari_virtual_stain.io.synthetic_ihc import make_ihc
    from napari_virtual_stain.io.sample_data import SEED
    from napari_virtual_stain.seg_metrics import classified_mask_scores
    from napari_virtual_stain.tasks.deepliif_evaluation import refined_mask
    from napari_virtual_stain.training.deepliif_samples import classes_from_labels
    from skimage import data

    synthetic = make_ihc((512, 512), seed=SEED)
    classes = classes_from_labels(synthetic["labels"], synthetic["positive"])
    truth = np.zeros(classes.shape + (3,), np.uint8)
    truth[classes == 2] = (255, 0, 0)
    truth[classes == 1] = (0, 0, 255)
    truth[classes == 3] = (0, 255, 0)
    skimage_ihc = data.immunohistochemistry()
    out = {}
    for label, method in methods.items():
        t = thresholds.get(label, Thresholds())
        synthetic_scores = classified_mask_scores(refined_mask(*method(synthetic["rgb"]), t), truth)
        real_scores = classified_mask_scores(refined_mask(*method(skimage_ihc), t), np.zeros_like(skimage_ihc))
        out[label] = {"synthetic sample": synthetic_scores, "skimage IHC cells": real_scores["cells_pred"],
                      "skimage IHC % positive": round(real_scores["percent_positive_pred"], 1)}
    return out


def seconds_per_view(methods: dict, ihc: np.ndarray, thresholds: dict, repeats: int = 3) -> dict[str, float]:
    """Median wall time of each method + cell rules (at its own thresholds: a split costs time) on one
    512 x 512 view (warm), measured in this run."""
    from napari_virtual_stain.tasks.deepliif_cells import Thresholds
    from napari_virtual_stain.tasks.deepliif_evaluation import refined_mask

    out = {}
    for label, method in methods.items():
        t = thresholds.get(label, Thresholds())
        refined_mask(*method(ihc), t)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            refined_mask(*method(ihc), t)
            times.append(time.perf_counter() - start)
        out[label] = round(float(np.median(times)), 3)
    return out


def row_names(images: dict) -> str:
    return ", ".join(f"{name} rows {r.start or 0}-{ihc.shape[0] if r.stop is None else r.stop}"
                     for name, (ihc, _, r) in images.items())


def report(methods: dict, thresholds: dict, timed: dict, held_out: dict, train_rows: dict, info: dict
           ) -> tuple[str, dict]:
    """The report's tables; ``thresholds``: a row's own cell thresholds by label; ``timed``: one
    uncached method per network for the speed line."""
    from napari_virtual_stain.tasks.deepliif_evaluation import format_table, score_table

    tables = {"held_out": score_table(methods, held_out, thresholds)}
    references = reference_images()
    if references:
        tables["released_model_agreement"] = score_table(methods, references, thresholds)
    tables["training_rows"] = score_table(methods, train_rows, thresholds)
    counts = sample_counts(methods, thresholds)
    text = [format_table(tables["held_out"], f"Held-out real rows ({row_names(held_out)}), against the "
                                             "ground-truth masks:"), ""]
    if references:
        text += [format_table(tables["released_model_agreement"],
                              f"Agreement with the released DeepLIIF model on {', '.join(references)} "
                              "(its own outputs, not ground truth; never trained on):"), ""]
    text += [format_table(tables["training_rows"], f"Training rows ({row_names(train_rows)}): trained on, and where "
                                                   "the own thresholds were chosen; a check of the choice, not a "
                                                   "score:"), ""]
    text += ["Project samples (synthetic: Dice / AJI against its truth; scikit-image IHC: cells found):", "",
             "| method | synthetic Dice | synthetic AJI | synthetic cells (found / true) | skimage IHC cells | "
             "skimage IHC % positive |", "|---|---|---|---|---|---|"]
    for label, c in counts.items():
        s = c["synthetic sample"]
        text.append(f"| {label} | {s['dice']:.3f} | {s['aji']:.3f} | {s['cells_pred']} / {s['cells_true']} | "
                    f"{c['skimage IHC cells']} | {c['skimage IHC % positive']} |")
    first = next(iter(held_out.values()))[0]
    speed = seconds_per_view(timed, first[:512, :512], thresholds)
    text += ["", f"Seconds per 512 x 512 view, network + cell rules at the own thresholds, warm, "
             f"{torch.get_num_threads()} torch thread(s), "
             "this run: " + ", ".join(f"{k} {v}" for k, v in speed.items())]
    text += ["", f"Training: {json.dumps(info)}"]
    return "\n".join(text), {**tables, "samples": counts, "seconds_per_view": speed}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=SHARED / "data" / "deepliif-sample" / "train")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--report", type=Path, default=None, help="also write the report (Markdown) here")
    p.add_argument("--compare", type=Path, action="append", default=[],
                   help="another DeepLIIF model to score in the same tables (e.g. the previous bundled one)")
    p.add_argument("--steps", type=int, default=1500, help="the bundled model: 1500")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--base", type=int, default=16)
    p.add_argument("--max-width", type=int, default=128)
    p.add_argument("--border-weight", type=float, default=1.5,
                   help="cross-entropy weight of the border class (higher splits touching nuclei more)")
    p.add_argument("--gap-weight", type=float, default=0.0,
                   help="w0 of U-Net's weight map: extra loss weight on the narrow gaps between nuclei (0: off)")
    p.add_argument("--gap-sigma", type=float, default=4.0, help="sigma (px) of U-Net's weight map")
    p.add_argument("--synthetic", type=int, default=24, help="synthetic IHC fields (256 x 256) to train on")
    p.add_argument("--synthetic-fraction", type=float, default=0.25)
    p.add_argument("--pseudo-labels", type=Path, nargs="*", default=[], metavar="IMAGE",
                   help="real IHC images without ground truth, labelled by the classical baseline, added to the "
                        "segmentation training (never an image that is scored)")
    p.add_argument("--pseudo-fraction", type=float, default=0.3, help="share of samples from --pseudo-labels")
    p.add_argument("--val-rows", type=int, default=128, help="bottom rows of each real image held out for scoring")
    p.add_argument("--hold-out-image", default=None, metavar="NAME",
                   help="hold out this whole image (e.g. Lung1) and train on the others in full: one fold of a swap")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--score-only", action="store_true", help="re-score an existing --out model")
    p.add_argument("--positive-from", choices=("network", "dab"), default="dab",
                   help="what the card asks positive cells to come from: the IHC's DAB vote in the network's "
                        "cells (the bundled model: 'dab', tasks/deepliif_dab_vote.py) or the network's red/blue "
                        "(deepliif's rule); the report scores both")
    p.add_argument("--init", type=Path, default=None,
                   help="start from this deepliif-unet model (fine-tune it on --data) instead of random weights")
    args = p.parse_args(argv)

    from napari_virtual_stain.engine.predictor import Predictor
    from napari_virtual_stain.errors import VirtualStainError
    from napari_virtual_stain.models.checkpoint import load_checkpoint, save_checkpoint
    from napari_virtual_stain.models.deepliif_net import deepliif_card
    from napari_virtual_stain.tasks.deepliif_calibration import calibrate, card_entry
    from napari_virtual_stain.tasks.deepliif_cells import CARD_KEY, SEG_THRESHOLD_DEFAULT, Thresholds
    from napari_virtual_stain.tasks.deepliif_classical import classical_maps
    from napari_virtual_stain.tasks.deepliif_dab_vote import NETWORK
    from napari_virtual_stain.tasks.deepliif_evaluation import CLASSICAL, network_method
    from napari_virtual_stain.training.deepliif_samples import synthetic_sources

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    try:
        real, held_out, train_rows = load_real(args.data, args.val_rows, args.hold_out_image)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    if not real or not held_out:
        print(f"{args.data} needs 6-panel PNG files to train on and to hold out (with --hold-out-image, two "
              "or more)", file=sys.stderr)
        return 2
    held_out_words = (f"the whole of {args.hold_out_image}" if args.hold_out_image
                      else f"the bottom {args.val_rows} rows of each")
    if args.score_only:
        model, card = load_checkpoint(args.out)
        info = card.training
    else:
        scored = [path for path in args.pseudo_labels if path.resolve().parent in
                  (args.data.resolve(), FIXTURE_MAPS.resolve())]
        if scored:
            print(f"--pseudo-labels {scored[0]}: that image is scored in the report, so it cannot also be trained "
                  "on.", file=sys.stderr)
            return 2
        synthetic = synthetic_sources(args.synthetic, (256, 256), args.seed)
        try:
            pseudo = load_pseudo_labelled(args.pseudo_labels)
            model, info = train(args, real, synthetic, pseudo)
        except (ValueError, VirtualStainError) as err:
            print(err, file=sys.stderr)
            return 2
        info.update({
            "script": "scripts/train_deepliif.py", "seed": args.seed, "batch": args.batch, "crop": args.crop,
            "lr": args.lr, "data": [s.name for s in real], "continued_from": str(args.init or ""), "synthetic_fields": args.synthetic,
            "synthetic_fraction": args.synthetic_fraction,
            **({"pseudo_labelled": {"images": [str(p) for p in args.pseudo_labels], "labeller": "classical baseline",
                                    "fraction": args.pseudo_fraction}} if args.pseudo_labels else {}),
            **({"gap_weights": {"w0": args.gap_weight, "sigma": args.gap_sigma}} if args.gap_weight > 0 else {}),
            "held_out": f"{held_out_words} real image (never cropped for training)",
            "loss": f"cross-entropy (classes weighted {list(SEG_CLASS_WEIGHTS) + [args.border_weight]}) + "
                    f"{MODALITY_WEIGHT} x smooth L1 "
                    "on the modalities (real crops only)",
            "augmentation": "optical-density re-staining (H, DAB, residual scaled 0.35-2x / 0.5-1.5x, stain vectors "
                            "tilted), brightness/contrast/gamma, blur, noise, JPEG, scale 0.5-2x, flips, rot90"})
        card = deepliif_card(
            args.out.stem, arch_args(args), tile=512, overlap=32, architecture="deepliif-unet",
            description=(f"A compact DeepLIIF (one U-Net, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M "
                         "parameters): IHC (Ki67) -> hematoxylin, DAPI, Lap2, Ki67 and classified cells. Trained on "
                         f"the real DeepLIIF sample pairs ({', '.join(s.name for s in real)}; "
                         f"{held_out_words} held out) and {args.synthetic} synthetic IHC fields, with stain, "
                         "scale and scanner augmentation. Two real images are little: check its counts on your "
                         "slides, or fine-tune it."),
            training=info)
        save_checkpoint(args.out, model, card)
        print(f"saved {args.out}", flush=True)

    networks = {f"{card.name} (this model)": (model, card)}
    for other in args.compare:
        networks[f"{other.name} (compared)"] = load_checkpoint(other)
    methods, thresholds, timed, chosen = {CLASSICAL: classical_maps}, {}, {CLASSICAL: classical_maps}, {}
    classical_own, _ = calibrate(classical_maps, train_rows, seg_grid=(SEG_THRESHOLD_DEFAULT,))
    if classical_own != Thresholds():  # the same choice for the baseline: its segmentation is 0 or 255
        label = f"{CLASSICAL}, thresholds chosen the same way ({describe_thresholds(classical_own)})"
        methods[label], thresholds[label] = classical_maps, classical_own
    for label, (net, net_card) in networks.items():
        # the network's own classes: the thresholds are chosen on them, and the DAB vote redraws their maps
        method = network_method(Predictor(net, net_card, device="cpu", precision="fp32"), positive_from=NETWORK)
        timed[label] = method
        cached = remember_maps(method)
        own, calibration = calibrate(cached, train_rows)
        chosen[label] = (own, calibration)
        print(f"{label}: thresholds chosen on the training rows {describe_thresholds(own)} "
              f"{json.dumps(calibration)}", flush=True)
        methods[f"{label}, deepliif's thresholds"] = cached
        own_label = f"{label}, own thresholds ({describe_thresholds(own)})"
        methods[own_label], thresholds[own_label] = cached, own
        dab_label = f"{label}, own thresholds, {DAB_ROW}"
        methods[dab_label], thresholds[dab_label] = with_dab_vote(cached), own
        thresholds[label] = own  # the speed line's cells
    text, tables = report(methods, thresholds, timed, held_out, train_rows, info)
    print(text, flush=True)
    own, calibration = chosen[f"{card.name} (this model)"]
    card.extra[CARD_KEY] = card_entry(own, f"training rows ({row_names(train_rows)})", args.positive_from)
    card.description = describe_card(card, sum(q.numel() for q in model.parameters()) / 1e6,
                                     [name for name in train_rows], held_out_words,
                                     info.get("synthetic_fields", args.synthetic), tables)
    card.scores = {"held_out": {k: v["mean"] for k, v in tables["held_out"].items()},
                   "released_model_agreement": {k: v["mean"] for k, v in tables.get("released_model_agreement",
                                                                                    {}).items()},
                   "scorer": "napari_virtual_stain.seg_metrics.classified_mask_scores, deepliif 1.2.7 cell rules; "
                             "rows say their thresholds (deepliif's defaults, or the model's own chosen on its "
                             "training rows)"}
    save_checkpoint(args.out, model, card)
    if args.report:
        args.report.write_text(text + "\n")
    return 0


def describe_thresholds(t) -> str:
    marker = {None: "no marker rule", "auto": "marker auto"}.get(t.marker, f"marker {t.marker}")
    split = "no split" if t.split is None else f"split {t.split} px"
    grow = "" if t.grow is None else f", grown {t.grow} px"
    return f"seg {t.segmentation}, {split}{grow}, size {t.size}, {marker}"


def describe_card(card, params_m: float, real_names: list[str], held_out_words: str, synthetic: int,
                  tables: dict) -> str:
    """The model card's description: what it is, what it learnt from, its own cell thresholds and
    what they do on real images it never saw, next to deepliif's thresholds and the classical baseline."""
    from napari_virtual_stain.tasks.deepliif_cells import CARD_KEY

    own = card.extra.get(CARD_KEY, {})
    dab = own.get("positive_from") == "dab"

    def scores(table: str) -> str:
        rows = tables.get(table, {})
        pick = lambda *words: next((v["mean"] for k, v in rows.items() if all(w in k for w in words)), None)
        own_row = [("own thresholds, DAB vote", ("this model", "own thresholds", DAB_ROW))] if dab else []
        own_row.append(("own thresholds", ("this model", "own thresholds")))
        found = [(what, pick(*words)) for what, words in (
            own_row[0], ("deepliif's", ("this model", "deepliif's")),
            ("classical", (CLASSICAL_PREFIX,)))]
        return "; ".join(f"{what} {m['dice']:.2f} / {m['aji']:.2f} / {m['percent_positive_diff']:.1f}"
                         for what, m in found if m is not None)

    return (f"A compact DeepLIIF (one U-Net, {params_m:.1f} M parameters): IHC (Ki67) -> "
            "hematoxylin, DAPI, Lap2, Ki67 and classified cells. Trained on the real DeepLIIF sample pairs "
            f"({', '.join(real_names)}; {held_out_words} held out) and {synthetic} synthetic IHC fields, "
            "with stain, scale and scanner augmentation. Its cell thresholds (segmentation "
            f"{own.get('segmentation')}, size {own.get('size')}"
            + (f", touching nuclei split at {own['split']} px deep distance peaks" if own.get("split") else "")
            + (f", cells grown {own['grow']} px into the background after the split" if own.get("grow") else "")
            + ") were chosen on its training rows; deepliif's "
            "defaults suit deepliif's own networks."
            + (" Which cells are positive comes from the IHC's own DAB (colour deconvolution, in the network's "
               "cells), not from the network's colours: on unseen tissue that was closer to the truth." if dab else "")
            + " Dice / AJI / |diff % positive| on its held-out rows: "
            f"{scores('held_out')}; against the released DeepLIIF model's answers on two unseen images: "
            f"{scores('released_model_agreement')}. Two real images are little: check its counts on your slides, "
            "or fine-tune it.")


def with_dab_vote(method):
    """``method`` with each cell pixel's positive/negative redrawn from the IHC's DAB vote (its cells unchanged)."""
    from napari_virtual_stain.tasks.deepliif_dab_vote import redraw_whole

    def run(rgb):
        seg, marker = method(rgb)
        return redraw_whole(rgb, seg), marker

    return run


def remember_maps(method):
    """``method`` with its answers kept per image (the tables score one image under several thresholds)."""
    seen = {}

    def run(rgb):
        key = (id(rgb), rgb.shape)
        if key not in seen:
            seen[key] = (rgb, method(rgb))  # the image is kept too, so its id is not reused
        return seen[key][1]

    return run


if __name__ == "__main__":
    sys.exit(main())
