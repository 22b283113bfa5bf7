"""Shared helpers for the benchmark scripts: machine description, timing, real data, RESULTS.md."""

from __future__ import annotations

import os
import platform
import re
import resource
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing

RESULTS = REPO / "bench" / "RESULTS.md"
DATA = Path(os.environ.get("VIRTUAL_STAIN_DATA", REPO.parent / "shared" / "data"))


def machine() -> str:
    """One line: CPU model, cores, torch version and threads, native bf16, load at start."""
    cpu = platform.processor() or "unknown CPU"
    flags = set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        cpu = re.search(r"model name\s*:\s*(.+)", text).group(1).strip()
        flags = set(re.search(r"flags\s*:\s*(.+)", text).group(1).split())
    except (OSError, AttributeError):
        pass
    isa = ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "no AVX2"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu} ({isa}), {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} "
            f"threads, {gpu}; load average {load:.1f} when the run started (the machine is shared)")


def interleaved_times(runs: dict[str, Callable[[], object]], rounds: int = 3,
                      warmup: bool = True) -> dict[str, tuple[float, float]]:
    """Best (wall seconds, CPU seconds) of each run over ``rounds`` rounds that alternate the runs.

    On a shared machine the load changes from minute to minute: alternating the runs puts
    every one of them under the same conditions, and the minimum is the run least disturbed
    by others. CPU seconds (this process, all threads) are reported too: they hardly depend
    on what else runs, so ratios of them stay fair when wall-clock times are noisy.
    """
    if warmup:
        for fn in runs.values():
            fn()
    best = {name: (float("inf"), float("inf")) for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def brightfield_and_dapi(set_index: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A real brightfield focal series (Z, Y, X) and its DAPI image (Y, X), both uint8."""
    import tifffile

    folder = DATA / "sephace-brightfield-dapi"
    return (tifffile.imread(folder / f"set{set_index}_brightfield_ZYX.tif"),
            tifffile.imread(folder / f"set{set_index}_dapi_YX.tif"))


def percentile_normalise(a: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    lo, hi = np.percentile(a, [low, high])
    return ((a.astype(np.float32) - lo) / max(hi - lo, 1e-6)).astype(np.float32)


def briefly_train(model: torch.nn.Module, source: np.ndarray, target: np.ndarray, crop: tuple[int, ...],
                  steps: int = 8, batch: int = 2, seed: int = 0) -> torch.nn.Module:
    """A few Adam steps on random crops of a real pair (channels-first float arrays), then
    batch-norm statistics re-estimated on real crops.

    Not a useful model: weights and normalisation statistics shaped by real images, so that
    activations and outputs have realistic ranges for timing and precision checks.
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    spatial = source.shape[1:]

    def crops(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for _ in range(n):
            starts = [int(rng.integers(0, s - c + 1)) for s, c in zip(spatial, crop)]
            sl = (slice(None),) + tuple(slice(a, a + c) for a, c in zip(starts, crop))
            xs.append(source[sl])
            ys.append(target[sl])
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))

    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: on a busy machine one thread is much faster here
    for _ in range(steps):
        x, y = crops(batch)
        loss = torch.nn.functional.l1_loss(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    with torch.no_grad():
        for _ in range(4):
            model(crops(batch)[0])
    torch.set_num_threads(threads)
    return model.eval()


def cpu_class() -> str:
    """The vector instructions that decide CPU speed here: "AVX-512" or "AVX2" (or "other")."""
    try:
        flags = set(re.search(r"flags\s*:\s*(.+)", Path("/proc/cpuinfo").read_text()).group(1).split())
    except (OSError, AttributeError):
        return "other"
    return "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "other"


def update_results(section: str, body: str, per_cpu: bool = False) -> None:
    """Replace (or append) the section ``## {section}`` of bench/RESULTS.md with ``body``.

    ``per_cpu``: the section is kept once per :func:`cpu_class` (its title says which), so a run
    on an AVX-512 machine does not overwrite the record of an AVX2 one: sessions get either, and
    speed ratios differ between them.
    """
    if per_cpu:
        section = f"{section}, {cpu_class()} CPU"
    begin, end = f"<!-- begin {section} -->", f"<!-- end {section} -->"
    block = f"{begin}\n## {section}\n\n{body.strip()}\n{end}\n"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nWritten by the scripts in `bench/`; each section is replaced when its script runs again.\n\n"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end) + 1:]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    RESULTS.write_text(text)


def table(header: list[str], rows: list[list[object]]) -> str:
    """A Markdown table (also readable when printed)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
