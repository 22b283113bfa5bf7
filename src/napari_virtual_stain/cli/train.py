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
fits is a pair. The model card records the window (``planes``, ``centre``).
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
from ..training.defaults import DEFAULT_PATCH_SIDE, patch_for, rgb_channel_names
from .common import (_per_axis, add_axes_argument, fraction, non_negative_float, positive_float, positive_int, sizes,
                     unit_interval)


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
    p.add_argument("--lr", type=positive_float, default=None, help="learning rate (default 2e-4 Adam; 5e-5 RMSprop for wgan-gp)")
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
    p.add_argument("--val-every", type=positive_int, default=50, help="validate every N steps")
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


def channels_first(path: str, z_as_channels: bool = False, axes: str | None = None) -> tuple[np.ndarray, list[str], int]:
    """Read a file as (C, [Z], Y, X) float32; returns data, channel names and spatial dims."""
    from ..io.tiff_reader import load_image

    image = load_image(path, axes=axes)
    data, axes = np.asarray(image.data), image.axes
    if "T" in axes:
        raise InputError(f"{Path(path).name} is a time series; training takes one time point: save it on its own first.")
    if axes.endswith("S"):  # RGB samples become channels
        data = np.moveaxis(data, -1, 0)
        axes = "C" + axes[:-1]
        names = rgb_channel_names(data.shape[0])
    elif "C" in axes:
        names = list(image.channel_names) or [f"{Path(path).stem} {i + 1}" for i in range(data.shape[0])]
    else:
        data = data[None]
        axes = "C" + axes
        names = [Path(path).stem]
    if z_as_channels and "Z" in axes:
        c, z = data.shape[:2]
        data = data.reshape((c * z,) + data.shape[2:])
        names = [f"{n} z{k}" for n in names for k in range(z)]
        axes = axes.replace("Z", "")
    spatial_dims = len(axes) - 1
    return data.astype(np.float32, copy=False), names, spatial_dims


def _window_of_start(args, output: Path):
    """The z window of the model training starts from (None: not a 2.5D model, or a fresh one)."""
    from ..models.registry import model_card
    from ..models.zwindow import z_window

    start = output if args.resume else args.from_model
    if start is None or (args.resume and not output.is_file()):
        return None
    return z_window(model_card(str(start)))


def _window_pair(x: np.ndarray, y: np.ndarray, args, given_window, target_is_stack: bool):
    """(stack, targets, window) for a 2.5D model: the stack cut to the planes a single-plane target needs."""
    from ..training.layer_pairs import window_for_pair

    name = Path(args.input).name
    window, planes = window_for_pair(x.shape, target_is_stack, args.planes, args.target_plane, given_window, name)
    if target_is_stack:
        return x, y, window, planes
    if tuple(y.shape[2:]) != tuple(x.shape[2:]):
        raise InputError(f"The target is {'x'.join(map(str, y.shape[2:]))} but the planes of {name} are "
                         f"{'x'.join(map(str, x.shape[2:]))}: pairs must have the same shape.")
    return x[:, planes], y[:, 0], window, planes


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


def run(args: argparse.Namespace) -> int:
    from ..models.checkpoint import load_checkpoint
    from ..models.registry import model_card
    from ..training.starting import model_for_training
    from ..training.config import TrainConfig
    from ..training.trainer import Trainer

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

    given_window = _window_of_start(args, output)
    two_and_a_half = given_window is not None or args.arch == "unet-2.5d"
    if not two_and_a_half and (args.planes is not None or args.target_plane is not None):
        raise InputError("--planes and --target-plane are for 2.5D models: train one with --arch unet-2.5d.")
    if two_and_a_half and args.z_as_channels:
        raise InputError("A 2.5D model reads its planes from the stack itself: leave out --z-as-channels.")
    x, input_names, dims = channels_first(args.input, args.z_as_channels, args.axes)
    targets, target_names, plane_targets = [], [], []
    for path in args.targets:
        t, names, t_dims = channels_first(path)
        if two_and_a_half and dims == 3 and t_dims == 2:
            t = t[:, None]  # the target of one plane of the stack (which one: --target-plane)
            plane_targets.append(path)
        elif t_dims != dims:
            raise InputError(f"{Path(path).name} is {t_dims}D but the input is {dims}D: pairs must have the same shape.")
        targets.append(t)
        target_names += names
    if len({tuple(t.shape[1:]) for t in targets}) > 1:
        shapes = ", ".join("x".join(map(str, t.shape[1:])) for t in targets)
        raise InputError(f"The target files differ in shape ({shapes}): pairs must have the same shape.")
    y = np.concatenate(targets)
    window = None
    if two_and_a_half:
        x, y, window, used = _window_pair(x, y, args, given_window, target_is_stack=not plane_targets)
        dims = 2
        print(f"2.5D: windows of {window.planes} planes, predicting the window's plane {window.centre}"
              f"{'' if not plane_targets else f' (stack planes {used.start}-{used.stop - 1})'}", file=sys.stderr)

    if args.resume:
        if not output.is_file():
            raise InputError(f"There is no model at {output} to resume; start a run with --from or --arch.")
        model, card = load_checkpoint(output)
    elif args.from_model is not None:
        model_dims = model_card(args.from_model).spatial_dims
        if model_dims == 2 and dims == 3 and window is None:
            raise InputError(f"The model is 2D but {Path(args.input).name} is a stack; "
                             "use --z-as-channels if its planes are channels of one image.")
        model, card = model_for_training(from_model=args.from_model, n_in=x.shape[0], n_out=y.shape[0],
                                         spatial_dims=dims, input_names=input_names, output_names=target_names,
                                         name=args.name or output.stem)
    else:
        arch_args = args.arch_args
        if window is not None:  # the card records the window: planes and which of them is predicted
            arch_args = {**(arch_args or {}), "planes": window.planes, "centre": window.centre}
        model, card = model_for_training(arch=args.arch, n_in=x.shape[0], n_out=y.shape[0], spatial_dims=dims,
                                         input_names=input_names, output_names=target_names,
                                         arch_args=arch_args, name=args.name or output.stem)

    if args.patch is None or len(args.patch) == 1:  # one side: the same shapes as the Fine-tune dock's
        patch = list(patch_for(dims, args.patch[0] if args.patch else DEFAULT_PATCH_SIDE))
    else:
        patch = _per_axis(args.patch, dims, "patch")
    config = TrainConfig(
        patch=patch, batch_size=args.batch_size, steps=args.steps, epochs=args.epochs, max_minutes=args.minutes,
        lr=args.lr, loss=args.loss, alpha=args.alpha, gan=None if args.gan == "none" else args.gan, critic=args.critic,
        gan_weight=args.gan_weight, n_critic=args.n_critic, lr_schedule=args.lr_schedule, patience=args.patience,
        val_fraction=args.val_fraction, val_every=args.val_every, seed=args.seed, device=args.device,
        precision=args.precision, best_path=str(output))
    trainer = Trainer(model, card, [x], [y], config)
    if args.resume:
        trainer.resume(output)
    trainer_start = trainer.step
    print(f"training {card.summary()} on {Path(args.input).name} ({'x'.join(map(str, x.shape[1:]))}), "
          f"patch {'x'.join(map(str, patch))}, from step {trainer.step}", file=sys.stderr)

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
        result = trainer.run(cancel=cancel, on_update=_Printer())
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
