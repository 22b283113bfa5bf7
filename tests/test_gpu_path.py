"""The GPU path of the engine: transfers, out-of-memory halving, fp32 fallback, memory-sized batches.

Every test runs on the CPU; where this machine has CUDA the device-parametrised ones run on it
too (the pinned-memory and copy-stream path, the real memory probe). No test is skipped.
"""

import numpy as np
import pytest
import torch

from napari_virtual_stain.engine.batch_runner import CudaPeakProbe, sizes_from_memory
from napari_virtual_stain.engine.memory import MPS_OUT_OF_MEMORY, USABLE_FRACTION, batch_for_memory, is_out_of_memory
from napari_virtual_stain.engine.predictor import Predictor
from napari_virtual_stain.engine.tiling import n_tiles
from napari_virtual_stain.engine.transfer import CudaTransfer, Transfer, ahead, transfer_for
from napari_virtual_stain.errors import InputError
from napari_virtual_stain.models.card import ModelCard

from conftest import nan_loss_at_call

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
NO_NORM = {"kind": "none"}


@pytest.fixture(autouse=True)
def own_torch_rng():
    """These tests seed torch (models, trainers); the global generator is put back afterwards, so
    later tests that build unseeded models see the state they would have seen without this file."""
    with torch.random.fork_rng(devices=[]):
        yield


@pytest.fixture(autouse=True)
def true_fp32_on_cuda(monkeypatch):
    """CUDA convolutions default to TF32 (10-bit mantissa) in "fp32": runs at different batch
    sizes then pick different kernels and differ by ~1e-3. These tests compare such runs, so
    fp32 means fp32 here (the models here are all convolutions: cuDNN's switch is the one)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def make_card(n_in=1, n_out=None, tile=16, overlap=4):
    n_out = n_in if n_out is None else n_out
    return ModelCard(
        name="test model", task="stain", architecture="test", arch_args={}, spatial_dims=2,
        input_channels=[f"in{i}" for i in range(n_in)], output_channels=[f"out{i}" for i in range(n_out)],
        input_normalisation=NO_NORM, output_activation="none", tile=[tile, tile], overlap=[overlap, overlap])


def conv_stack(n_in=1, n_out=1, seed=0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(n_in, 4, 3, padding=1), torch.nn.Tanh(),
                               torch.nn.Conv2d(4, n_out, 3, padding=1))


class Recording(torch.nn.Module):
    """Wraps a model; records each forward's batch size and whether autocast was on."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.sizes, self.autocast = [], []

    def forward(self, x):
        self.sizes.append(int(x.shape[0]))
        self.autocast.append(torch.is_autocast_enabled(x.device.type))
        return self.inner(x)


class OutOfMemoryAbove(Recording):
    """Raises the device's out-of-memory error for batches bigger than ``limit`` tiles."""

    def __init__(self, inner, limit, error):
        super().__init__(inner)
        self.limit, self.error = limit, error

    def forward(self, x):
        if x.shape[0] > self.limit:
            self.sizes.append(int(x.shape[0]))
            raise self.error
        return super().forward(x)


RNG = np.random.default_rng(0)
CUDA_OOM = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
MPS_OOM = RuntimeError(f"{MPS_OUT_OF_MEMORY} (MPS allocated: 17.00 GB, other allocations: 1.00 GB, "
                       "max allowed: 18.13 GB). Tried to allocate 512.00 MB on private pool.")


# ---- pure parts -------------------------------------------------------------------------------

@pytest.mark.parametrize("lookahead,expected", [
    (0, ["submit 0", "use 0", "submit 1", "use 1", "submit 2", "use 2"]),
    (1, ["submit 0", "submit 1", "use 0", "submit 2", "use 1", "use 2"]),
    (5, ["submit 0", "submit 1", "submit 2", "use 0", "use 1", "use 2"]),
])
def test_ahead_submits_lookahead_items_before_the_current_one_is_used(lookahead, expected):
    events = []

    def submit(i):
        events.append(f"submit {i}")
        return i * 10

    for item, handle in ahead(range(3), submit, lookahead):
        assert handle == item * 10  # each item keeps its own handle
        events.append(f"use {item}")
    assert events == expected


def test_batch_for_memory_fits_the_usable_share_and_stays_between_one_and_the_cap():
    mib = 2**20
    assert batch_for_memory(1000 * mib, 10 * mib, cap=256) == int(USABLE_FRACTION * 1000) // 10  # 80
    assert batch_for_memory(1000 * mib, 10 * mib, cap=16) == 16
    assert batch_for_memory(5 * mib, 10 * mib, cap=16) == 1  # not even one fits: try one, halving is the backstop
    assert batch_for_memory(1000 * mib, 0, cap=16) == 16  # nothing measured: the cap


def test_out_of_memory_errors_of_cuda_and_mps_are_recognised_and_others_not():
    assert is_out_of_memory(CUDA_OOM)
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert is_out_of_memory(MPS_OOM)
    assert not is_out_of_memory(RuntimeError("Given groups=1, weight of size [4, 1, 3, 3], expected input ..."))
    assert not is_out_of_memory(ValueError(MPS_OUT_OF_MEMORY))


@pytest.mark.parametrize("device", DEVICES)
def test_transfer_round_trip_and_finite_flag(device):
    transfer = transfer_for(torch.device(device))
    assert isinstance(transfer, CudaTransfer) == (device == "cuda")
    assert transfer.lookahead == (1 if device == "cuda" else 0)
    host = transfer.host_batch((2, 1, 8, 8), np.float32)
    assert torch.from_numpy(host).is_pinned() == (device == "cuda")  # no page-locking without a copy engine
    host[:] = RNG.random(host.shape, dtype=np.float32)
    x = transfer.upload(host)
    assert x.device.type == device
    fetched = transfer.download(x * 2, check_finite=True)
    np.testing.assert_array_equal(fetched.values(), host * 2)
    assert fetched.finite()
    x[0, 0, 3, 3] = float("inf")
    assert not transfer.download(x, check_finite=True).finite()
    assert transfer.download(x, check_finite=False).finite()  # not asked: not checked


def test_streams_off_gives_the_synchronous_path_everywhere():
    assert type(transfer_for(torch.device("cpu"), streams=True)) is Transfer
    assert type(transfer_for(torch.device("cuda"), streams=False)) is Transfer  # no CUDA call made


# ---- out of memory ----------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("error", [CUDA_OOM, MPS_OOM], ids=["cuda-oom", "mps-oom"])
def test_out_of_memory_halves_the_batch_and_gives_the_batch_of_one_result(device, error):
    image = RNG.random((1, 40, 56), dtype=np.float32)
    card = make_card(tile=16, overlap=4)
    one = Predictor(conv_stack(), card, device=device, batch_size=1, precision="fp32").predict(image)
    model = OutOfMemoryAbove(conv_stack(), limit=2, error=error)
    predictor = Predictor(model, card, device=device, batch_size=8, precision="fp32")
    out = predictor.predict(image)
    np.testing.assert_allclose(out, one, rtol=0, atol=1e-5)
    assert model.sizes[:3] == [8, 4, 2]  # 8 failed, its half 4 failed, a quarter ran
    assert predictor.batch_size == 2  # kept for the rest of the run
    assert max(model.sizes[2:]) == 2  # no batch bigger than 2 was tried again
    assert sum(model.sizes[2:]) == n_tiles((40, 56), (16, 16), (4, 4))  # every tile ran exactly once


@pytest.mark.parametrize("device", DEVICES)
def test_a_single_tile_out_of_memory_is_one_sentence_and_other_errors_pass_through(device):
    image = RNG.random((1, 16, 16), dtype=np.float32)
    predictor = Predictor(OutOfMemoryAbove(conv_stack(), limit=0, error=MPS_OOM), make_card(), device=device, batch_size=4)
    with pytest.raises(InputError, match="^The GPU ran out of memory on a single tile; choose a smaller tile size or the CPU.$"):
        predictor.predict(image)
    broken = Predictor(OutOfMemoryAbove(conv_stack(), limit=0, error=RuntimeError("a bug")), make_card(), device=device)
    with pytest.raises(RuntimeError, match="^a bug$"):
        broken.predict(image)


# ---- reduced precision that overflows ---------------------------------------------------------

def overflowing_conv() -> torch.nn.Module:
    """Sums two channels with weights 2**127: (1, 0.999) gives 3.401e38, finite in fp32 (max
    3.403e38) but past bf16's largest value (3.390e38), so bf16 autocast makes it inf."""
    conv = torch.nn.Conv2d(2, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(2.0**127)
    return conv


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_bf16_output_is_redone_in_fp32_and_fp32_is_kept_for_the_rest(device):
    # Four 16x16 tiles side by side (no overlap), one per batch; only the second overflows in bf16.
    image = np.full((2, 16, 64), 0.1, dtype=np.float32)
    image[0, :, 16:32], image[1, :, 16:32] = 1.0, 0.999
    card = make_card(n_in=2, n_out=1, tile=16, overlap=0)
    fp32 = Predictor(overflowing_conv(), card, device=device, batch_size=1, precision="fp32").predict(image)
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16):  # the premise: bf16 overflows
        assert torch.isinf(overflowing_conv().to(device)(torch.from_numpy(image[None, :, :, 16:32]).to(device))).all()
    model = Recording(overflowing_conv())
    predictor = Predictor(model, card, device=device, batch_size=1, precision="bf16")
    out = predictor.predict(image)

    assert np.isfinite(fp32).all() and np.isfinite(out).all()
    np.testing.assert_array_equal(out[..., 16:], fp32[..., 16:])  # the overflowing tile and all after: fp32
    assert not np.array_equal(out[..., :16], fp32[..., :16])  # the first tile kept its (finite) bf16 result
    # Tiles 0 and 1 in bf16 (and on CUDA tile 2, queued before tile 1's output was read), then
    # three fp32 passes: the redo of tile 1, tile 2 (redone there, first run here) and tile 3.
    lookahead = predictor.runner.transfer.lookahead
    assert model.autocast == [True, True] + [True] * lookahead + [False] * 3
    assert predictor.precision == "fp32"
    said = [w for w in predictor.warnings if "non-finite" in w]
    assert said == ["The model gave non-finite values in bf16 (the reduced precision overflowed), "
                    "so that batch was redone in fp32 and the rest ran in fp32."]

    # The same Predictor later: fp32 from the start, and the run says why, once.
    model.autocast.clear()
    np.testing.assert_array_equal(predictor.predict(image), fp32)
    assert model.autocast == [False] * 4
    assert [w for w in predictor.warnings if "non-finite" in w] == [
        "This run used fp32: on an earlier run the model gave non-finite values in bf16 (the reduced precision overflowed)."]


@pytest.mark.parametrize("device", DEVICES)
def test_finite_bf16_output_stays_in_bf16(device):
    image = RNG.random((1, 32, 32), dtype=np.float32)
    model = Recording(conv_stack())
    predictor = Predictor(model, make_card(), device=device, batch_size=2, precision="bf16")
    predictor.predict(image)
    assert set(model.autocast) == {True} and predictor.precision == "bf16" and predictor.runner.fallback_note() is None


# ---- batch size from memory -------------------------------------------------------------------

class FakeProbe:
    """Stands in for CudaPeakProbe on a machine without CUDA: fixed peak and free bytes."""

    def __init__(self, peak, free):
        self.peak, self.free, self.started = peak, free, 0

    def start(self):
        self.started += 1

    def peak_bytes(self):
        return self.peak

    def free_bytes(self):
        return self.free


@pytest.mark.parametrize("device", DEVICES)
def test_batches_are_sized_from_one_measured_tile(device):
    image = RNG.random((1, 80, 80), dtype=np.float32)
    card = make_card(tile=16, overlap=4)
    one = Predictor(conv_stack(), card, device=device, batch_size=1, precision="fp32").predict(image)
    model = Recording(conv_stack())
    predictor = Predictor(model, card, device=device, precision="fp32")
    cap = predictor.batch_size
    if device == "cpu":  # no probe on the CPU: give it one to test the same sizing logic
        assert predictor.runner.probe is None
        probe = predictor.runner.probe = FakeProbe(peak=2**20, free=5 * 2**20)
        expected = batch_for_memory(5 * 2**20, 2**20, cap)
        assert 1 < expected < cap
    else:
        assert isinstance(predictor.runner.probe, CudaPeakProbe)
        probe = None
    out = predictor.predict(image)
    np.testing.assert_allclose(out, one, rtol=0, atol=1e-5)
    assert model.sizes[0] == 1  # the probe: one tile
    size = predictor.batch_size
    if probe is not None:
        assert probe.started == 1 and size == expected
    assert 1 < size <= cap and predictor.runner.probe is None  # measured once
    tiles = n_tiles((80, 80), (16, 16), (4, 4))
    assert max(model.sizes[1:]) == min(size, tiles - 1)  # (a big GPU takes all the rest in one batch)
    model.sizes.clear()
    predictor.predict(image)
    assert model.sizes[0] == min(size, tiles)  # later runs start at the measured size


def test_only_an_unrequested_batch_of_a_batch_independent_network_on_cuda_is_measured():
    cuda, cpu, mps = torch.device("cuda"), torch.device("cpu"), torch.device("mps")
    assert sizes_from_memory(cuda, None, True, 16)
    assert not sizes_from_memory(cuda, 3, True, 16)  # asked for: kept
    assert not sizes_from_memory(cuda, None, False, 1)  # batch-dependent: one by one
    assert not sizes_from_memory(cuda, None, True, 1)  # tiles so big the cap is one
    assert not sizes_from_memory(cpu, None, True, 8) and not sizes_from_memory(mps, None, True, 16)


# ---- the pipelined path gives the same numbers -----------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_batched_pipelined_tta_equals_one_tile_at_a_time_without_streams(device):
    image = RNG.random((1, 45, 61), dtype=np.float32)
    card = make_card(tile=16, overlap=6)
    reference = Predictor(conv_stack(), card, device=device, batch_size=1, precision="fp32", streams=False)
    pipelined = Predictor(conv_stack(), card, device=device, batch_size=3, precision="fp32")
    for tta in (False, True):
        np.testing.assert_allclose(pipelined.predict(image, tta=tta), reference.predict(image, tta=tta),
                                   rtol=0, atol=1e-5)
    # and TTA changed something, so its passes were really averaged
    assert np.abs(pipelined.predict(image, tta=True) - pipelined.predict(image)).max() > 1e-4


# ---- training: the gradient scaler under the non-finite guard --------------------------------

def _trainer(device, **kw):
    from test_training_trainer import _cells, _config, _tiny

    from napari_virtual_stain.training.trainer import Trainer

    x, y = _cells()
    model, card = _tiny(norm="group")
    # fp16 (and so the scaler) on CUDA; the CPU refuses fp16, so there the same path runs in fp32
    precision = "fp16" if device == "cuda" else "fp32"
    trainer = Trainer(model, card, [x], [y], _config(val_fraction=0, device=device, precision=precision, **kw))
    if device == "cpu":
        assert not trainer.grad_scaling
        trainer.grad_scaling = True
    else:
        assert trainer.grad_scaling
    return trainer


def test_only_fp16_on_cuda_scales_the_loss():
    from napari_virtual_stain.training.trainer import needs_grad_scaling

    assert needs_grad_scaling(torch.device("cuda"), "fp16")
    assert not needs_grad_scaling(torch.device("cuda"), "bf16")  # bf16 has fp32's range
    assert not needs_grad_scaling(torch.device("cuda"), "fp32")
    assert not needs_grad_scaling(torch.device("mps"), "fp16")


def test_scaled_fp32_steps_equal_unscaled_ones_on_the_cpu():
    # A power-of-two scale and its inverse change no bit of an fp32 gradient: the scaler's
    # path must then train exactly as the plain one.
    from test_training_trainer import _cells, _config, _tiny

    from napari_virtual_stain.training.trainer import Trainer

    x, y = _cells()
    states = []
    for scaling in (False, True):
        model, card = _tiny(norm="group")
        trainer = Trainer(model, card, [x], [y], _config(steps=3, val_fraction=0, precision="fp32"))
        trainer.grad_scaling = scaling
        trainer.run()
        states.append(trainer.model.state_dict())
        if scaling:
            assert [s.get_scale() for s in trainer._scalers.values()] == [65536.0]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_steps_with_the_scaler_are_skipped_counted_and_shrink_the_scale(device):
    trainer = _trainer(device, steps=4)
    nan_loss_at_call(trainer, 2)
    updates, scales, before = [], [], {}

    def watch(u):
        updates.append(u)
        scales.append(trainer._scalers[id(trainer.optimizer)].get_scale())
        if u.step == 1:
            before.update({k: v.clone() for k, v in trainer.model.state_dict().items()})
        if u.step == 2:  # the NaN step changed no weight
            assert all(torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())

    result = trainer.run(on_update=watch)
    assert updates[1].skipped and scales[1] == scales[0] / 2  # the NaN step: skipped, and the scale backed off
    assert result.card.training["skipped_steps"] == sum(u.skipped for u in updates)
    if device == "cpu":  # (in fp16 a step may also overflow while the scaler finds its scale)
        assert [u.skipped for u in updates] == [False, True, False, False]
        assert scales == [65536.0, 32768.0, 32768.0, 32768.0]


@pytest.mark.parametrize("device", DEVICES)
def test_with_the_scaler_divergence_is_declared_after_its_backoffs_too(device):
    from napari_virtual_stain.training.trainer import MAX_BAD_STEPS_IN_A_ROW, SCALER_BACKOFFS

    trainer = _trainer(device, steps=40)
    real_loss = trainer.loss_fn
    trainer.loss_fn = lambda pred, target, mask: real_loss(pred, target, mask) * float("nan")
    limit = MAX_BAD_STEPS_IN_A_ROW + SCALER_BACKOFFS
    with pytest.raises(InputError, match=f"Training diverged at step {limit}: the loss or its gradients were not finite {limit} steps"):
        trainer.run()
    assert trainer.skipped_steps == limit
    assert trainer._scalers[id(trainer.optimizer)].get_scale() == 65536.0 / 2**limit  # halved at every bad step


@pytest.mark.parametrize("device", DEVICES)
def test_a_gan_gets_one_scaler_per_optimiser_and_trains_both_networks(device):
    trainer = _trainer(device, steps=2, gan="wgan-gp", critic_width=4, n_critic=2)
    critic_before = {k: v.clone() for k, v in trainer.critic.state_dict().items()}
    generator_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.run()
    assert set(trainer._scalers) == {id(trainer.optimizer), id(trainer.critic_optimizer)}
    if device == "cpu":  # in fp16 the scaler may skip a first step while it finds its scale
        assert result.card.training["skipped_steps"] == 0
    assert any(not torch.equal(v, critic_before[k]) for k, v in trainer.critic.state_dict().items())
    assert any(not torch.equal(v, generator_before[k]) for k, v in trainer.model.state_dict().items())
