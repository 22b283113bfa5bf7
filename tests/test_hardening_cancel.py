"""Cancel answers inside one long forward pass (hardening issue, item 4), in the core.

The network here is a deep stack of layers that each count their calls and take a few
milliseconds, so one tile is one long pass. The assertions count layers, never seconds.
"""

import threading
import time

import numpy as np
import pytest
import torch

from napari_virtual_stain.engine.predictor import Predictor
from napari_virtual_stain.errors import Cancelled

from conftest import tiny_unet_card

N_LAYERS = 60


class Slow(torch.nn.Module):
    """One layer of the stack: a 1x1 conv that records each call and takes ``delay`` seconds."""

    def __init__(self, index, calls, delay, on_call=None):
        super().__init__()
        self.index, self.calls, self.delay, self.on_call = index, calls, delay, on_call
        self.conv = torch.nn.Conv2d(2, 2, 1)

    def forward(self, x):
        self.calls.append(self.index)
        if self.on_call is not None:
            self.on_call(self.index)
        if self.delay:
            time.sleep(self.delay)
        return torch.tanh(self.conv(x))


class Deep(torch.nn.Module):
    def __init__(self, delay=0.0, on_call=None):
        super().__init__()
        self.calls: list[int] = []
        torch.manual_seed(0)
        self.head = torch.nn.Conv2d(1, 2, 3, padding=1)
        self.body = torch.nn.Sequential(*[Slow(i, self.calls, delay, on_call) for i in range(N_LAYERS)])

    def forward(self, x):
        return torch.sigmoid(self.body(self.head(x)))


def predictor(model):
    card = tiny_unet_card(name="deep")  # one input, two outputs, 32 px tiles
    return Predictor(model, card, device="cpu", tile=(64, 64), overlap=(8, 8), precision="fp32")


def image():
    return np.random.default_rng(0).random((1, 64, 64)).astype(np.float32)  # exactly one tile


def no_hooks_left(model):
    return all(not m._forward_pre_hooks for m in model.modules())


def test_cancel_set_during_the_pass_stops_before_the_next_layer():
    cancel = threading.Event()
    model = Deep(on_call=lambda i: cancel.set() if i == 10 else None)  # the user clicks at layer 10
    p = predictor(model)
    with pytest.raises(Cancelled):
        p.predict(image(), cancel=cancel)
    assert model.calls == list(range(11))  # layer 10 ran, layer 11 never started
    assert no_hooks_left(model)


def test_cancel_from_another_thread_stops_long_before_the_pass_ends_and_the_model_still_works():
    reference = predictor(Deep()).predict(image())  # a normal run: every layer, no cancel
    reached = threading.Event()
    model = Deep(delay=0.02, on_call=lambda i: reached.set() if i == 5 else None)
    p = predictor(model)
    cancel = threading.Event()

    def click_cancel():
        reached.wait(30)
        cancel.set()

    clicker = threading.Thread(target=click_cancel)
    clicker.start()
    with pytest.raises(Cancelled):
        p.predict(image(), cancel=cancel)
    clicker.join()
    ran = len(model.calls)
    assert 6 <= ran < N_LAYERS // 2, f"{ran} of {N_LAYERS} layers ran after Cancel"
    assert no_hooks_left(model)
    # the same predictor and model, next run: complete, and the same output as a fresh model
    model.calls.clear()
    model.on_call = None
    for layer in model.body:
        layer.on_call, layer.delay = None, 0.0
    again = p.predict(image(), cancel=threading.Event())
    assert len(model.calls) == N_LAYERS
    np.testing.assert_array_equal(again, reference)
    assert no_hooks_left(model)


def test_hooks_are_removed_when_the_model_fails_mid_pass():
    def boom(i):
        if i == 3:
            raise ValueError("broken layer")
    model = Deep(on_call=boom)
    with pytest.raises(ValueError):
        predictor(model).predict(image(), cancel=threading.Event())
    assert no_hooks_left(model)


def test_a_hook_of_one_run_does_not_cancel_another_thread_using_the_same_model():
    reference = predictor(Deep()).predict(image())
    a_cancelled, b_done = threading.Event(), threading.Event()
    cancel_a = threading.Event()

    def on_call(i):  # run A is cancelled at layer 20 and waits there (its hooks in place) while B runs
        if i == 20 and threading.current_thread().name == "a":
            cancel_a.set()
            a_cancelled.set()
            b_done.wait(60)
    model = Deep(on_call=on_call)
    p = predictor(model)
    results = {}

    def run_a():
        try:
            results["a"] = p.predict(image(), cancel=cancel_a)
        except Cancelled as err:
            results["a"] = err

    def run_b():
        a_cancelled.wait(60)
        try:
            results["b"] = p.predict(image(), cancel=threading.Event())
        finally:
            b_done.set()

    threads = [threading.Thread(target=run_a, name="a"), threading.Thread(target=run_b, name="b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(results["a"], Cancelled)
    np.testing.assert_array_equal(results["b"], reference)  # B ran every layer despite A's cancel
    assert no_hooks_left(model)


def test_torchscript_models_run_and_cancel_between_batches():
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Sigmoid()))
    p = predictor(scripted)
    out = p.predict(image(), cancel=threading.Event())
    assert out.shape == (2, 64, 64)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        p.predict(image(), cancel=cancel)
