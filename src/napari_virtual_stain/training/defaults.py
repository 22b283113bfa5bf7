"""Training choices that must not depend on the door the user came through.

The Fine-tune dock and ``virtual-stain train`` both take their channel names and patch
shapes from here, so a model's card is the same whether it was trained in napari or in a
shell script.
"""

from __future__ import annotations

from ..models.card import RGB_CHANNELS  # one naming of colour channels, DeepLIIF's cards' too

__all__ = ["DEFAULT_PATCH_SIDE", "RGB_CHANNELS", "patch_for", "rgb_channel_names"]

DEFAULT_PATCH_SIDE = 128

# Adam's learning rate when a trained model is fine-tuned without a GAN (a fresh network, or
# a GAN, keeps the Trainer's own default). Measured on a real field the bundled models never
# saw (bench/bench_finetune_real.py: sephace set2, left half trained, right half scored):
# from label-free-nuclei-2d (untuned PCC 0.648), 4 CPU minutes at the Trainer's 2e-4 LOWERED
# the held-out PCC to 0.580 (the steps undo what the model knew), 5e-5 reached 0.677 and 2e-5
# 0.702, the validation band improving all the while in every case.
FINE_TUNE_LR = 2e-5


def learning_rate(lr: float | None, fine_tuning: bool, gan: str | None) -> float | None:
    """The run's learning rate: ``lr`` when given, else :data:`FINE_TUNE_LR` for a supervised
    fine-tuning run, else None (the Trainer's default for a fresh network or a GAN)."""
    if lr is not None:
        return lr
    return FINE_TUNE_LR if fine_tuning and not gan else None


def rgb_channel_names(n: int) -> list[str]:
    """Names of the ``n`` (3 or 4) samples of a colour image."""
    return list(RGB_CHANNELS[:n])


def patch_for(spatial_dims: int, side: int = DEFAULT_PATCH_SIDE) -> tuple[int, ...]:
    """The training patch for one ``side`` (the dock's "patch", ``--patch N``).

    2D: side x side. 3D: thin slabs, min(16, side // 4) planes of side/2 x side/2 pixels
    (16 x 64 x 64 for the default): a 3D U-Net step on 16 x 128 x 128 costs 4x more on a
    CPU and the bundled 3D model learnt well from 16-plane patches.
    """
    side = int(side)
    if spatial_dims == 2:
        return (side, side)
    return (max(1, min(16, side // 4)), max(1, side // 2), max(1, side // 2))
