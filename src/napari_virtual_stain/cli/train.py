"""``virtual-stain train INPUT TARGET [TARGET2 ...] (--from MODEL | --arch NAME) -o MODEL.pt``.

Trains (or fine-tunes) a model on one co-registered pair of files: the input image or
stack and one or more target files, whose channels are stacked in order (a target file
may hold several channels; NaN pixels are missing values). Prints a progress line now
and then and the validation scores at the end. The best model so far is written to the
output during the run; the first Ctrl-C stops training and keeps it, with a resume state
next to it (``--resume`` continues). The result is usable as
``virtual-stain predict --model MODEL.pt``.

``--arch unet-2.5d`` trains a 2.5D model: a window of z planes of the input stack in, the
window's centre plane out. With a single-plane target (a DAPI image of the field) the
window is placed around ``--target-plane``; with a target stack every plane whose window
fits is a pair. The model card records the window (``planes``, ``centre``). These are
fields of the workflow's settings, checked there, as the Fine-tune dock's are.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.outputs import check_output_file
from ..tasks.arrays import nan_fraction
from .common import add_axes_argument, fraction, non_negative_float, positive_float, positive_int, sizes, unit_interval


def register(sub) -> None:
    p = sub.add_parser("train", help="train or fine-tune a model on co-registered image pairs",
                       description="Train or fine-tune a virtual-staining model on an input image and its real stains.")
    p.add_argument("input", help="input image or stack (TIFF), e.g. brightfield")
    p.add_argument("targets", nargs="+", help="target image(s) of the same shape (TIFF); channels are stacked in order")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from", dest="from_model", metavar="MODEL",
                       help="model to fine-tune (name from `virtual-stain models`, or a .pt file)")
    start.add_argument("--arch", metavar="NAME", help="architecture to train from scratch (unet, resnet_generator, ...)")
    p.add_argument("--arch-args", type=_json_object, default=None, metavar="JSON",
                   help='with --arch: constructor arguments, e.g. \'{"depth": 3, "base": 16}\'')
    p.add_argument("-o", "--output", required=True, help="where to write the model (.pt)")
    p.add_argument("--name", default=None, help="model name in its card (default: the output file's name)")
    p.add_argument("--resume", action="store_true", help="continue the run saved at --output (its .state.pt)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing model at --output (it is kept until this run has trained weights to save)")
    length = p.add_argument_group("how long (whichever ends first; default 500 steps)")
    length.add_argument("--steps", type=positive_int, default=None)
    length.add_argument("--epochs", type=positive_int, default=None)
    length.add_argument("--minutes", type=positive_float, default=None)
    p.add_argument("--patch", type=sizes, default=None,
                   help="training patch: one side P (P x P in 2D; min(16, P/4) x P/2 x P/2 in 3D; default 128) "
                        "or every size, e.g. 16,128,128")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--lr", type=positive_float, default=None, help="learning rate (default: 5e-5 when fine-tuning a model "
                   "without a GAN, else 2e-4 Adam; 5e-5 RMSprop for wgan-gp)")
    p.add_argument("--lr-schedule", default="constant", choices=["constant", "constant_then_linear"])
    p.add_argument("--loss", default="l1", choices=["l1", "smooth_l1", "ssim_l1", "l1_l2"])
    p.add_argument("--alpha", type=unit_interval, default=0.5, help="weight of SSIM in ssim_l1, of L1 in l1_l2")
    p.add_argument("--gan", default="none", choices=["none", "vanilla", "lsgan", "wgan-gp"])
    p.add_argument("--critic", default="patchgan", choices=["patchgan", "multiscale"],
                   help="multiscale = pix2pixHD's critics at 3 scales + feature matching (vanilla/lsgan)")
    p.add_argument("--gan-weight", type=non_negative_float, default=None)
    p.add_argument("--n-critic", type=positive_int, default=None)
    p.add_argument("--patience", type=positive_int, default=None, help="stop after this many validations without improvement")
    p.add_argument("--val-fraction", type=fraction, default=0.15, help="part of the Y axis kept for validation")
    p.add_argument("--val-every", type=positive_int, default=None,
                   help="validate every N steps (default: a tenth of the steps, between 5 and 50; as the Fine-tune dock)")
    add_axes_argument(p)
    p.add_argument("--z-as-channels", action="store_true",
                   help="feed the planes of an input stack to a 2D model as channels (e.g. a brightfield focal series)")
    window = p.add_argument_group("2.5D models (--arch unet-2.5d): a window of z planes in, its centre plane out")
    window.add_argument("--planes", type=positive_int, default=None,
                        help="planes the model reads (default: the whole stack for a single-plane target, "
                             "5 for a target stack)")
    window.add_argument("--target-plane", type=int, default=None, metavar="Z",
                        help="for a single-plane target: the stack plane it belongs to (0 = first; default: the middle)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda or mps")
    p.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def _json_object(text: str) -> dict:
    """``--arch-args``: a JSON object of constructor arguments."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON ({err.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object like '{{\"depth\": 3}}'")
    return value


def image_from_file(path: str, axes: str | None = None, *, checked: bool = True):
    """A file as the workflow's TrainingImage: grey, colour (RGB samples) or channels first."""
    from ..io.tiff_reader import load_image
    from ..training.layer_pairs import TrainingImage

    image = load_image(path, axes=axes)
    data, axes = np.asarray(image.data), image.axes
    if "T" in axes:
        raise InputError(f"{Path(path).name} is a time series; training takes one time point: save it on its own first.")
    name = Path(path).stem
    if axes.endswith("S"):
        return TrainingImage(data, name, rgb=True)
    if "C" in axes:
        data = np.moveaxis(data, axes.index("C"), 0)
        return TrainingImage(data, name, channel_names=list(image.channel_names) or None)
    return TrainingImage(data, name)


def channels_first(path: str, z_as_channels: bool = False, axes: str | None = None) -> tuple[np.ndarray, list[str], int]:
    """Read a file as an input: (C, [Z], Y, X) float32, channel names and spatial dims."""
    from ..training.layer_pairs import training_pairs

    image = image_from_file(path, axes)
    x, names = image.channels("input")
    if z_as_channels and x.ndim == 4:
        pairs = training_pairs(image, [image], 2, z_as_channels=True)
        return pairs.inputs[0], pairs.input_names, 2
    return x, names, x.ndim - 1


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class _Printer:
    """Prints a line every ~5% of the run and at every validation."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.last_val_step = None

    def __call__(self, u) -> None:
        every = max(1, (u.total_steps or 200) // 20)
        validated = u.val_step is not None and u.val_step != self.last_val_step
        if not (validated or u.step % every == 0 or u.step == 1):
            return
        self.last_val_step = u.val_step
        total = f"/{u.total_steps}" if u.total_steps else ""
        parts = [f"step {u.step}{total}", f"train {u.train_loss:.4f}"]
        if u.val_loss is not None:
            parts.append(f"val {u.val_loss:.4f} (best {u.best_val_loss:.4f})")
        if u.critic_loss is not None:
            parts.append(f"critic {u.critic_loss:.3f} adv {u.gen_adv_loss:.3f}")
        parts.append(f"{u.sec_per_step:.2f} s/step, {_duration(u.eta_s)} left")
        print("  ".join(parts), file=self.stream, flush=True)


def _print_scores(scores: dict, stream) -> None:
    if not scores:
        print("no validation scores (no validation region)", file=stream)
        return
    print(f"{'channel':<16}{'SSIM':>8}{'PSNR':>8}{'PCC':>8}{'MAE':>8}", file=stream)
    for name, s in scores.items():
        print(f"{name:<16}{s['ssim']:>8.3f}{s['psnr']:>8.2f}{s['pcc']:>8.3f}{s['mae']:>8.4f}", file=stream)


def settings_from(args: argparse.Namespace, output: Path):
    """The workflow's settings for these arguments (what the Fine-tune dock builds from its fields)."""
    from ..workflows.finetune import FineTuneSettings

    return FineTuneSettings(
        arch=args.arch, from_model=args.from_model, arch_args=args.arch_args, name=args.name or output.stem,
        patch=tuple(args.patch) if args.patch else FineTuneSettings().patch, steps=args.steps, epochs=args.epochs,
        minutes=args.minutes, batch_size=args.batch_size, lr=args.lr, lr_schedule=args.lr_schedule, loss=args.loss,
        alpha=args.alpha, gan=args.gan, critic=args.critic, gan_weight=args.gan_weight, n_critic=args.n_critic,
        patience=args.patience, val_fraction=args.val_fraction, val_every=args.val_every, seed=args.seed,
        device=args.device, precision=args.precision, z_as_channels=args.z_as_channels, planes=args.planes,
        target_plane=args.target_plane)


def run(args: argparse.Namespace) -> int:
    from ..workflows import finetune as workflow

    if not args.resume and args.from_model is None and args.arch is None:
        raise InputError("Say where to start: --from MODEL to fine-tune, or --arch NAME to train from scratch.")
    if args.resume and (args.from_model is not None or args.arch is not None):
        raise InputError("--resume continues the run saved at --output; it takes neither --from nor --arch.")
    output = check_output_file(args.output, inputs=[args.input, *args.targets], suffixes=(".pt",), label="model file")
    state_file = output.with_suffix(".state.pt")
    check_output_file(state_file, inputs=[args.input, *args.targets], suffixes=(".pt",), label="training state")
    if args.from_model is not None and Path(args.from_model).expanduser().is_file() \
            and Path(args.from_model).expanduser().resolve() == output.resolve():
        raise InputError(f"The model to fine-tune and the output are the same file ({output.name}): give the "
                         "fine-tuned model its own name, or continue a run with --resume.")
    if not args.resume and output.exists() and not args.overwrite:
        raise InputError(f"{output} already exists: give another name, continue its run with --resume, "
                         "or replace it with --overwrite.")
    if args.resume and not output.is_file():
        raise InputError(f"There is no model at {output} to resume; start a run with --from or --arch.")

    settings = settings_from(args, output)
    if args.resume:  # the saved model says where it started; the settings only need a valid start
        settings.arch, settings.from_model = None, str(output)
    image = image_from_file(args.input, args.axes)
    targets = [image_from_file(path) for path in args.targets]
    for path, read in zip([args.input, *args.targets], [image, *targets]):
        share = nan_fraction(read.data)
        if share > 0:
            print(f"warning: {share:.1%} of the pixels of {Path(path).name} are NaN or infinite; training treats "
                  "them as 0", file=sys.stderr)
    trainer = workflow.prepare(settings, image, targets, resume=output if args.resume else None, best_path=output)
    card, trainer_start = trainer.card, trainer.step
    shape = "x".join(map(str, trainer.train_data.shapes[0]))
    window = trainer.train_data.z_window
    if window is not None:
        planes = trainer.source_planes or []
        print(f"2.5D: windows of {window.planes} planes, predicting the window's plane {window.centre} "
              f"(target plane(s) {', '.join(map(str, planes[:8]))}{'...' if len(planes) > 8 else ''} of the stack)",
              file=sys.stderr)
    print(f"training {card.summary()} on {Path(args.input).name} ({shape}), "
          f"patch {'x'.join(map(str, trainer.config.patch))}, from step {trainer.step}", file=sys.stderr)

    # First Ctrl-C: stop after this step and keep the best model; a second one aborts.
    cancel = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        def stop(signum, frame):
            if cancel.is_set():
                raise KeyboardInterrupt
            cancel.set()
            print("\nstopping after this step (Ctrl-C again to abort)", file=sys.stderr)
        previous = signal.signal(signal.SIGINT, stop)
    try:
        result = workflow.run(trainer, cancel=cancel, on_update=_Printer())
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if result.steps == 0 or (result.steps == trainer_start and not args.resume):
        print(f"{result.reason} before the first training step: nothing was written"
              f"{' and ' + output.name + ' is unchanged' if output.exists() else ''}.", file=sys.stderr)
        return 130 if result.stopped else 0
    trainer.save(output)
    print(f"{result.reason}: {result.steps} steps in {_duration(result.seconds)}, best at step {result.best_step}",
          file=sys.stderr)
    _print_scores(result.scores, sys.stderr)
    print(f"wrote {output} (resume state: {output.with_suffix('.state.pt').name})", file=sys.stderr)
    return 0
