"""Traced DeepLIIF translators rebuilt as eager modules: the same answers, or the recording runs."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from napari_virtual_stain.engine import fast_conv
from napari_virtual_stain.models import traced_rebuild
from napari_virtual_stain.models.deepliif_official import load_release_folder
from napari_virtual_stain.models.traced_rebuild import rebuild_traced

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "deepliif-official"


# deepliif's generator layout (class and attribute names are what the recording keeps): zero
# padding, batch norm with the running statistics removed, dropout in every block.
class ResnetBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim, track_running_stats=False), nn.ReLU(True),
            nn.Dropout(0.5), nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim, track_running_stats=False))

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    def __init__(self, ngf=32, n_blocks=2):
        super().__init__()
        bn = lambda c: nn.BatchNorm2d(c, track_running_stats=False)  # noqa: E731
        layers = [nn.ZeroPad2d(3), nn.Conv2d(3, ngf, 7, bias=False), bn(ngf), nn.ReLU(True)]
        for mult in (1, 2):
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=False), bn(ngf * mult * 2), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for mult in (4, 2):
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1, bias=False),
                       bn(ngf * mult // 2), nn.ReLU(True)]
        layers += [nn.ZeroPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def _traced(module, side=64):
    torch.manual_seed(3)
    for p in module.parameters():  # batch-norm affine away from 1/0, so a wrong one shows
        nn.init.normal_(p, 0.0, 0.3) if p.dim() == 1 else None
    return torch.jit.trace(module.eval(), torch.rand(1, 3, side, side) * 2 - 1, check_trace=False)


def _input(side, seed=0):
    return torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def recording():
    return _traced(ResnetGenerator(ngf=32))  # a 128-channel trunk: NNPACK's layers


def test_a_deepliif_layout_recording_is_rebuilt_with_the_same_answer(recording):
    rebuilt = rebuild_traced(recording)
    assert rebuilt is not None
    assert not any(isinstance(m, torch.jit.ScriptModule) for m in rebuilt.modules())
    for x in (_input(96, 1), _input(80, 2).contiguous(memory_format=torch.channels_last)):
        with torch.no_grad():
            expected, got = recording(x), rebuilt(x)
        assert got.shape == expected.shape
        assert float((got - expected).abs().max()) < 1e-3  # an 8-bit level is 7.8e-3
    # the padding before each 7x7 convolution became the convolution's own
    assert not any(isinstance(m, traced_rebuild.Pad) for m in rebuilt.modules())


def test_the_wide_layers_of_the_rebuild_run_through_nnpack(recording, monkeypatch):
    rebuilt = rebuild_traced(recording)
    fast_conv.nnpack_ready()
    calls = []
    real = torch._nnpack_spatial_convolution
    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", lambda *a: calls.append(a[1].shape) or real(*a))
    with torch.no_grad():
        rebuilt(_input(256))  # a 64 x 64 trunk: large enough for NNPACK
    trunk = [shape for shape in calls if tuple(shape) == (128, 128, 3, 3)]
    assert len(trunk) == (4 if fast_conv.nnpack_ready() else 0)  # two blocks of two convolutions


def test_a_rebuild_that_disagrees_on_the_probe_is_refused(recording, monkeypatch):
    monkeypatch.setattr(traced_rebuild, "PROBE_TOLERANCE", -1.0)
    assert rebuild_traced(recording) is None


class Doubler(nn.Module):
    def forward(self, x):
        return x * 2


def test_recordings_with_parts_it_does_not_know_are_left_as_they_are():
    assert rebuild_traced(_traced(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), Doubler()))) is None
    # a block of deepliif's name that multiplies instead of adding
    multiplying = type("ResnetBlock", (ResnetBlock,), {"forward": lambda self, x: x * self.conv_block(x)})
    assert rebuild_traced(_traced(nn.Sequential(nn.Conv2d(3, 8, 1), multiplying(8)))) is None


def test_the_official_fixture_folder_runs_rebuilt_translators_with_deepliifs_answers():
    folder = FIXTURES / "models-ngf4"
    fast, _ = load_release_folder(folder)
    recorded, _ = load_release_folder(folder, rebuild=False)
    assert all(not isinstance(g, torch.jit.ScriptModule) for g in fast.translators)
    assert all(isinstance(g, torch.jit.ScriptModule) for g in recorded.translators)
    rgb = np.asarray(Image.open(FIXTURES / "inputs" / "ihc_512.png").convert("RGB"), dtype=np.float32)
    x = torch.from_numpy(rgb / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        a, b = fast(x), recorded(x)
    assert float((a - b).abs().max()) < 1e-4
    # and deepliif's own Hema file, written as uint8 by truncation, within one level
    hema = np.asarray(Image.open(FIXTURES / "expected" / "current" / "ihc_512_mod1-Hema.png").convert("RGB"), dtype=int)
    ours = np.floor((a[0, :3].permute(1, 2, 0).numpy() + 1) / 2 * 255).astype(int)
    assert np.abs(ours - hema).max() <= 1
