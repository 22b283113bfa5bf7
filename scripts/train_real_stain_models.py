"""Train the bundled ``label-free-nuclei-2d`` model on real pairs and score it on held-out real fields.

    python scripts/train_real_stain_models.py [--steps 1500] [--start auto|demo|scratch]
        [--arch unet-s4d3b32|unet-d4b16|unet-s2d4b16-add] [--pilot-steps 150] [--finetune-steps 0]
        [--threads 1] [--out-dir DIR] [--save auto|never]

One input channel (a single label-free plane: brightfield, transmitted light, phase), one
output (nuclei), a 2D U-Net of one of the shapes in ``models.unet.SHAPES_2D`` (``--arch``;
by default the fast one with a 4x4 space-to-depth stem; the shape the demo model has can also
start from its weights, the others start from random weights), trained with the project's Trainer (``training.label_free_trainer``:
random scale 0.5-2x, turns, flips, contrast inversion, gamma, halos, defocus, shading,
noise) on

- ``sephace-brightfield-dapi`` set1, LEFT half (x < 672): each of the 6 focal planes a
  separate single-plane sample, all paired with the DAPI image;
- ``fnet-3d``, LEFT half (x < 64) of every z plane, transmitted light -> ``dna_ZYX`` (the
  measured, noisy Hoechst stack; ``fnet2017_prediction_ZYX`` is the 2017 model's output
  and is not used), upsampled 2x so a half plane holds a 128 px training patch;
- synthetic fields (``io.synthetic.make_cells_2d``) from microscopes with pixel sizes
  0.2-0.65 um and both defocus signs.

``colicoords-ecoli`` is left out: its fluorescence fills whole bacteria (cytoplasm) and
bacteria have no nucleus, so as a "nuclei" target it would teach the model to paint whole
cells.

Held out, never trained on: sephace set2 (the whole field), the right half of sephace set1,
the right half of fnet-3d (all z). Each is scored plane by plane through the Predictor
(the card's tiles and percentile normalisation, native pixel size) against the real stain
scaled to [0, 1]; PCC / SSIM / MAE are means over the planes. Next to it: the bundled demo
model's nuclei channel, untuned, and the normalised input itself (BL-Mean).

The starting point (the demo model's weights or random weights) is chosen by a short pilot
of each, compared on the Trainer's validation loss (a band of the training pairs), never
on the held-out fields; a shape the demo model's weights do not fit starts from random weights. ``--finetune-steps N`` adds the fine-tuning comparison: N steps of
the plain Trainer on the left half of sephace set2 (6 planes), scored on its right half,
starting from the new model, the demo model and random weights.

CPU, seeded; one thread by default (the machine is shared).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from napari_virtual_stain.engine.normalise import compute_stats, normalise  # noqa: E402
from napari_virtual_stain.engine.predictor import Predictor  # noqa: E402
from napari_virtual_stain.io.synthetic import Microscope, make_cells_2d  # noqa: E402
from napari_virtual_stain.metrics import channel_scores  # noqa: E402
from napari_virtual_stain.models.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from napari_virtual_stain.models.registry import load_model  # noqa: E402
from napari_virtual_stain.models.unet import SHAPES_2D  # noqa: E402
from napari_virtual_stain.training.datasets import TARGET_NORMALISATION  # noqa: E402
from napari_virtual_stain.training.label_free_trainer import LabelFreeTrainer  # noqa: E402
from napari_virtual_stain.training.starting import model_for_training  # noqa: E402
from napari_virtual_stain.training.trainer import TrainConfig, Trainer, training_precision  # noqa: E402

DATA = REPO.parent / "shared" / "data"
BUNDLED = REPO / "src" / "napari_virtual_stain" / "models" / "bundled"
NAME = "label-free-nuclei-2d"
DEMO = "demo-2d-nuclei-membrane"
ARCHITECTURES = SHAPES_2D
DEFAULT_ARCH = "unet-s4d3b32"
SEPHACE_SPLIT_X = 672  # set1: x < 672 trains, x >= 672 is held out
FNET_SPLIT_X = 64
FNET_UPSAMPLE = 2
SYNTHETIC_SEEDS = list(range(100, 112))
SYNTHETIC_SHAPE = (384, 384)
# Share of training crops per source (each source's pairs share it by area).
SOURCE_WEIGHTS = {"sephace": 0.45, "fnet": 0.2, "synthetic": 0.35}
METRICS = ("pcc", "ssim", "mae")


def log(*parts) -> None:
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


# ---- data ------------------------------------------------------------------------------

def read_sephace(which: str) -> tuple[np.ndarray, np.ndarray]:
    folder = DATA / "sephace-brightfield-dapi"
    return (tifffile.imread(folder / f"{which}_brightfield_ZYX.tif").astype(np.float32),
            tifffile.imread(folder / f"{which}_dapi_YX.tif").astype(np.float32))


def read_fnet() -> tuple[np.ndarray, np.ndarray]:
    folder = DATA / "fnet-3d"
    return (tifffile.imread(folder / "transmitted_light_ZYX.tif").astype(np.float32),
            tifffile.imread(folder / "dna_ZYX.tif").astype(np.float32))


def synthetic_microscopes() -> list[Microscope]:
    """Pixel sizes from the sephace 40x (0.2 um) to the demo's default (0.65 um), focus on both sides."""
    out = []
    for i, pixel in enumerate((0.2, 0.3, 0.45, 0.65)):
        base = Microscope.different() if i % 2 else Microscope()
        out += [replace(base, pixel_size_um=pixel), replace(base, pixel_size_um=pixel, defocus_um=-base.defocus_um)]
    return out


def training_pairs() -> tuple[list[np.ndarray], list[np.ndarray], list[float], list[str]]:
    """(inputs (1, Y, X), targets (1, Y, X), per-pair sampling weights, per-pair source names)."""
    inputs, targets, sources = [], [], []
    bf, dapi = read_sephace("set1")
    for plane in bf:
        inputs.append(plane[None, :, :SEPHACE_SPLIT_X])
        targets.append(dapi[None, :, :SEPHACE_SPLIT_X])
        sources.append("sephace")
    tl, dna = read_fnet()
    for z in range(tl.shape[0]):
        inputs.append(ndimage.zoom(tl[z, :, :FNET_SPLIT_X], FNET_UPSAMPLE, order=1)[None])
        targets.append(ndimage.zoom(dna[z, :, :FNET_SPLIT_X], FNET_UPSAMPLE, order=1)[None])
        sources.append("fnet")
    microscopes = synthetic_microscopes()
    for i, seed in enumerate(SYNTHETIC_SEEDS):
        cells = make_cells_2d(SYNTHETIC_SHAPE, seed=seed, microscope=microscopes[i % len(microscopes)])
        inputs.append(cells["brightfield"][None].astype(np.float32))
        targets.append(cells["nuclei"][None].astype(np.float32))
        sources.append("synthetic")
    weights = []
    for x, source in zip(inputs, sources):
        area = sum(i[0].size for i, s in zip(inputs, sources) if s == source)
        weights.append(SOURCE_WEIGHTS[source] * x[0].size / area)
    return inputs, targets, weights, sources


def held_out_regions() -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Per region, the (input (1, Y, X), target (Y, X)) planes to score; none is ever trained on."""
    bf1, dapi1 = read_sephace("set1")
    bf2, dapi2 = read_sephace("set2")
    tl, dna = read_fnet()
    return {
        "sephace set1 right half (6 planes)": [(p[None, :, SEPHACE_SPLIT_X:], dapi1[:, SEPHACE_SPLIT_X:]) for p in bf1],
        "sephace set2 whole field (6 planes)": [(p[None], dapi2) for p in bf2],
        "fnet-3d right half (32 planes)": [(tl[z][None, :, FNET_SPLIT_X:], dna[z][:, FNET_SPLIT_X:])
                                           for z in range(tl.shape[0])],
    }


# ---- scoring ---------------------------------------------------------------------------

def unit_target(target: np.ndarray) -> np.ndarray:
    return normalise(target[None], TARGET_NORMALISATION, compute_stats(target[None], TARGET_NORMALISATION))[0]


def score_planes(planes, predict) -> dict:
    """Mean PCC/SSIM/MAE over the planes of ``predict(input) -> (Y, X)`` against the unit target."""
    per_plane = []
    for x, target in planes:
        pred = predict(x)
        per_plane.append(channel_scores(pred[None], unit_target(target)[None], names=["nuclei"], metrics=METRICS)["nuclei"])
    mean = {m: float(np.nanmean([p[m] for p in per_plane])) for m in METRICS}
    mean["pcc_per_plane"] = [round(float(p["pcc"]), 3) for p in per_plane]
    return mean


def model_predictor(model, card, channel: int):
    predictor = Predictor(model.cpu().eval(), card, device="cpu", precision="fp32")
    return lambda x: predictor.predict(x)[channel]


def input_baseline(card):
    def predict(x):
        return np.clip(normalise(x, card.input_normalisation, compute_stats(x, card.input_normalisation)), 0, 1)[0]
    return predict


def evaluate(model, card, regions, channel: int = 0) -> dict:
    predict = model_predictor(model, card, channel)
    return {name: score_planes(planes, predict) for name, planes in regions.items()}


# ---- training --------------------------------------------------------------------------

def fresh_or_demo(start: str, arch: str):
    """(model, card) for the new model: the demo model's weights (nuclei head kept) or random ones."""
    torch.manual_seed(0)
    common = dict(n_in=1, n_out=1, spatial_dims=2, input_names=["label-free"], output_names=["nuclei"], name=NAME)
    if start == "demo":
        model, card = model_for_training(from_model=DEMO, **common)
    else:
        model, card = model_for_training(arch="unet", arch_args=ARCHITECTURES[arch][1], **common)
        card.tile, card.overlap = [1024, 1024], [64, 64]
    return model, card


def config(steps: int, lr: float) -> TrainConfig:
    return TrainConfig(patch=(128, 128), batch_size=8, steps=steps, lr=lr, loss="l1",
                       lr_schedule="constant_then_linear", decay_start=0.6, val_every=max(10, min(100, steps // 10)),
                       max_val_tiles=32, val_fraction=0.15, seed=0, device="cpu",
                       precision=training_precision(torch.device("cpu"), "auto", 2))


def demo_fits(arch: str) -> bool:
    """Whether the demo model's weights fit the U-Net shape ``arch`` (same arch_args but the channels)."""
    demo = load_model(DEMO)[1].arch_args
    return {k: v for k, v in demo.items() if k not in ("in_channels", "out_channels")} == {
        k: v for k, v in {"spatial_dims": 2, **ARCHITECTURES[arch][1]}.items()}


def train_new(start: str, steps: int, data, label: str, arch: str = DEFAULT_ARCH):
    inputs, targets, weights, _ = data
    model, card = fresh_or_demo(start, arch)
    # Half the learning rate from the demo weights: at 1e-3 the first steps undo what it knew.
    cfg = config(steps, lr=5e-4 if start == "demo" else 1e-3)
    trainer = LabelFreeTrainer(model, card, inputs, targets, cfg, pair_weights=weights)

    def report(u):
        if u.step % 50 == 0 or u.step == 1:
            val = f"val {u.val_loss:.4f} (step {u.val_step})" if u.val_loss is not None else ""
            log(f"{label} step {u.step}  train {u.train_loss:.4f}  {val}  {u.sec_per_step:.2f} s/step")

    result = trainer.run(on_update=report)
    log(f"{label}: {result.reason} after {result.steps} steps, {result.seconds / 60:.1f} min, best step "
        f"{result.best_step}, best val {result.best_val_loss}")
    return trainer, result, cfg


def pilot_score(trainer) -> float:
    """Validation PCC (the band of the training pairs, never a held-out field) of the LAST weights.

    Not the best-so-far weights: those include step 0, where the demo model's untouched
    weights would win by default.
    """
    trainer.model.load_state_dict(trainer.last_state)
    _, scores = trainer.validate()
    return round(float(scores["nuclei"]["pcc"]), 4)


def finetune_comparison(new_path: Path | None, new_model, new_card, steps: int, arch: str = DEFAULT_ARCH) -> dict:
    """Plain-Trainer fine-tuning on the left half of sephace set2, scored on its right half."""
    bf, dapi = read_sephace("set2")
    half = bf.shape[-1] // 2
    inputs = [p[None, :, :half] for p in bf]
    targets = [dapi[None, :, :half] for _ in bf]
    region = {"sephace set2 right half (6 planes)": [(p[None, :, half:], dapi[:, half:]) for p in bf]}
    out = {}
    common = dict(n_in=1, n_out=1, spatial_dims=2, input_names=["label-free"], output_names=["nuclei"])
    for label in ("new", "demo", "scratch"):
        torch.manual_seed(0)
        if label == "new":
            model, card = model_for_training(from_model=str(new_path), **common) if new_path else (
                copy.deepcopy(new_model), copy.deepcopy(new_card))
        elif label == "demo":
            model, card = model_for_training(from_model=DEMO, **common)
        else:
            model, card = model_for_training(arch="unet", arch_args=ARCHITECTURES[arch][1], **common)
        cfg = config(steps, lr=5e-4 if label != "scratch" else 1e-3)
        trainer = Trainer(model, card, inputs, targets, cfg)
        t0 = time.perf_counter()
        result = trainer.run()
        scores = evaluate(trainer.model, trainer.trained_card(), region)
        name = next(iter(region))
        out[label] = {**scores[name], "steps": result.steps, "minutes": round((time.perf_counter() - t0) / 60, 1),
                      "lr": cfg.lr}
        log(f"fine-tune from {label}: {steps} steps -> PCC {out[label]['pcc']:.3f} SSIM {out[label]['ssim']:.3f}")
    out["input"] = score_planes(region[next(iter(region))], input_baseline(new_card))
    return out


# ---- report ----------------------------------------------------------------------------

def results_rows(scores: dict) -> list[list[str]]:
    rows = []
    for region in scores["new"]:
        for label, key in ((NAME + " (untuned)", "new"), (DEMO + " nuclei (untuned)", "demo"),
                           ("normalised input (BL-Mean)", "input")):
            v = scores[key][region]
            rows.append([region, label] + [f"{v[m]:.3f}" for m in METRICS] + [f"{max(v['pcc_per_plane']):.3f}"])
    return rows


def write_results(scores: dict, finetune: dict | None, command: str, training: dict, saved: bool) -> str:
    sys.path.insert(0, str(REPO / "bench"))
    from _common import machine, table, update_results

    body = (f"Machine: {machine()}.\n\n`{command}`: `{NAME}` ({training['architecture']}; one "
            f"label-free plane -> nuclei), started from {training['started_from']}, {training['steps']} steps "
            f"({training['minutes']} min, {training['precision']}) on sephace set1 left half (6 planes), fnet-3d left "
            "half (32 planes, 2x upsampled), 12 synthetic fields; augmentation: scale 0.5-2x, turns, flips, contrast "
            "inversion, gamma, halos, defocus blur, shading, noise. Scored through the Predictor at native pixel size "
            "on regions never trained on, mean over planes (and the best single plane: the input's PCC changes sign "
            "with focus, so its mean hides its best plane), against the real stain scaled to [0, 1]. "
            f"{'Saved as the bundled model.' if saved else 'NOT saved: it did not beat the demo model.'}\n\n"
            + table(["held-out region", "prediction", "PCC", "SSIM", "MAE", "PCC best plane"], results_rows(scores)))
    if finetune:
        rows = [[f"from {k}" if k != "input" else "normalised input (BL-Mean)"] + [f"{finetune[k][m]:.3f}" for m in METRICS]
                + [f"{finetune[k]['steps']} steps, {finetune[k]['minutes']} min, lr {finetune[k]['lr']}" if k != "input" else ""]
                for k in ("new", "demo", "scratch", "input")]
        body += ("\n\nFine-tuning comparison (plain Trainer, same steps, flips/turns only): trained on the left half "
                 "of sephace set2 (6 planes), scored on its right half (6 planes).\n\n"
                 + table(["start", "PCC", "SSIM", "MAE", "training"], rows))
    update_results(f"Bundled label-free nuclei model ({Path(__file__).name})", body)
    return body


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--start", choices=["auto", "demo", "scratch"], default="auto")
    p.add_argument("--arch", choices=sorted(ARCHITECTURES), default=DEFAULT_ARCH,
                   help="the U-Net's shape (models.unet.SHAPES_2D); only the demo model's can start from its weights")
    p.add_argument("--pilot-steps", type=int, default=150, help="steps of each pilot when --start auto")
    p.add_argument("--finetune-steps", type=int, default=0, help="steps of the fine-tuning comparison (0: skip)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", type=Path, default=BUNDLED)
    p.add_argument("--save", choices=["auto", "never"], default="auto",
                   help="auto: save only if its mean PCC over the held-out regions beats the demo model's")
    p.add_argument("--pilot-only", action="store_true", help="run the pilot (--start auto) and stop")
    p.add_argument("--pilot-note", default="", help="what an earlier pilot found, for the card (with --start demo/scratch)")
    p.add_argument("--json", type=Path, help="also write every number here")
    args = p.parse_args(argv)
    fits = demo_fits(args.arch)
    if args.start == "demo" and not fits:
        p.error(f"--start demo needs the demo model's shape; {args.arch} is another, so it starts from random weights")
    torch.set_num_threads(args.threads)
    command = "python scripts/train_real_stain_models.py " + " ".join(argv if argv is not None else sys.argv[1:])

    t0 = time.perf_counter()
    data = training_pairs()
    log(f"{len(data[0])} training pairs made in {time.perf_counter() - t0:.0f} s")
    pilot = {}
    start = args.start
    if start == "auto" and not fits:
        start = "scratch"  # the demo model's weights do not fit this shape
    if start == "auto":
        for candidate in ("demo", "scratch"):
            pilot[candidate] = pilot_score(*train_new(candidate, args.pilot_steps, data, f"pilot {candidate}")[:1])
        start = max(pilot, key=pilot.get)
        log(f"pilot validation PCC {pilot} -> start from {start}")
        if args.pilot_only:
            return 0
    trainer, result, cfg = train_new(start, args.steps, data, "train", args.arch)

    regions = held_out_regions()
    demo_model, demo_card = load_model(DEMO)
    card = trainer.trained_card()
    scores = {"new": evaluate(trainer.model, card, regions),
              "demo": evaluate(demo_model, demo_card, regions, channel=demo_card.output_channels.index("nuclei")),
              "input": {name: score_planes(planes, input_baseline(card)) for name, planes in regions.items()}}
    for region in regions:
        log(region, {k: round(scores[k][region]["pcc"], 3) for k in scores})
    mean_pcc = {k: float(np.mean([scores[k][r]["pcc"] for r in regions])) for k in scores}
    # Saved when its PCC, averaged over the held-out regions, beats the demo model's (the
    # per-region numbers, including any region where it does not, go into the card and table).
    beats = mean_pcc["new"] > mean_pcc["demo"]
    saved = args.save == "auto" and beats
    training = {
        "architecture": f"{args.arch}: {ARCHITECTURES[args.arch][0]}",
        "data": (f"sephace-brightfield-dapi set1 x < {SEPHACE_SPLIT_X} (6 focal planes, each paired with the DAPI); "
                 f"fnet-3d x < {FNET_SPLIT_X} of all 32 z planes, transmitted light -> dna_ZYX, upsampled "
                 f"{FNET_UPSAMPLE}x; synthetic make_cells_2d seeds {SYNTHETIC_SEEDS[0]}-{SYNTHETIC_SEEDS[-1]} "
                 f"{list(SYNTHETIC_SHAPE)} from 8 microscopes (pixel 0.2-0.65 um, both defocus signs); crop shares "
                 f"{SOURCE_WEIGHTS}. colicoords-ecoli left out (cytoplasm, not nuclei)."),
        "augmentation": "scale 0.5-2x, 90-degree turns, flips, contrast inversion, gamma 0.6-1.7, phase-like halos, "
                        "defocus blur, illumination tilt, noise (training.label_free_trainer)",
        "started_from": (f"'{DEMO}' weights (nuclei head kept)" if start == "demo" else "random weights")
                        + (f"; chosen by a {args.pilot_steps}-step pilot each, validation PCC {pilot}" if pilot else "")
                        + (f"; {args.pilot_note}" if args.pilot_note else ""),
        "steps": result.steps, "best_step": result.best_step, "minutes": round(result.seconds / 60, 1),
        "threads": args.threads, "precision": cfg.precision, "torch": str(torch.__version__),
        "script": "scripts/train_real_stain_models.py", "config": cfg.to_dict(),
        "history": card.training.get("history", {}),
    }
    training["config"].pop("best_path", None)
    card.name = NAME
    card.input_channels, card.output_channels = ["label-free"], ["nuclei"]
    held = {r: {k: {m: scores[k][r][m] for m in METRICS} for k in scores} for r in regions}
    card.scores = {"held_out": {"data": "regions never trained on, scored plane by plane through the Predictor at "
                                        "native pixel size; targets scaled to [0, 1] (1st/99.8th percentiles); mean "
                                        "over planes", "regions": held,
                                "baselines": {"demo": f"'{DEMO}' nuclei channel, untuned",
                                              "input": "the normalised input plane (BL-Mean)"}},
                   "validation": card.scores.get("validation", {})}
    card.description = (
        "Label-free (one brightfield / transmitted-light / phase plane, any polarity) -> nuclei. Trained on REAL "
        "pairs (sephace 40x brightfield -> DAPI, left half of set1; fnet transmitted light -> Hoechst, left half) "
        "plus synthetic cells, with augmentation for other microscopes. Held-out mean PCC over planes: "
        + "; ".join(f"{r}: {scores['new'][r]['pcc']:.2f} (demo {scores['demo'][r]['pcc']:.2f}, normalised input "
                    f"{scores['input'][r]['pcc']:.2f})" for r in regions)
        + ". A starting point: fine-tune on a few of your own pairs for your microscope.")
    card.training = training
    result_json = {"pilot": pilot, "start": start, "scores": scores, "mean_pcc": mean_pcc, "saved": saved,
                   "training": {k: v for k, v in training.items() if k not in ("history", "config")}}
    out_path = args.out_dir / f"{NAME}.pt"
    if saved:
        save_checkpoint(out_path, trainer.model.cpu(), card)
        load_checkpoint(out_path)  # proves it loads
        log(f"wrote {out_path} ({out_path.stat().st_size / 1e6:.1f} MB)")
    else:
        log(f"not saved (mean held-out PCC {mean_pcc['new']:.3f} vs the demo model's {mean_pcc['demo']:.3f}; --save {args.save})")
    finetune = None
    if args.finetune_steps:
        finetune = finetune_comparison(out_path if saved else None, trainer.model, card, args.finetune_steps, args.arch)
        result_json["finetune"] = finetune
    if args.json:
        args.json.write_text(json.dumps(result_json, indent=1))
    print(json.dumps(result_json, indent=1, default=str))
    print(write_results(scores, finetune, command, training, saved))
    return 0


if __name__ == "__main__":
    sys.exit(main())
