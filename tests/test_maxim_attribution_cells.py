"""MAXIM attribution (integrated gradients, zero baseline) and cell-level evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_virtual_stain.errors import InputError
from napari_virtual_stain.tasks.maxim_attribution import attribute_marker, integrated_gradients
from napari_virtual_stain.tasks.maxim_cells import evaluate_cells, precision_recall
from napari_virtual_stain.tasks.region import Region
from test_maxim_core import MARKERS, OracleMean, good_stack, oracle_card


class Linear(torch.nn.Module):
    """y = sum_c w_c x_c: integrated gradients are exactly w_c * x_c."""

    def __init__(self, weights):
        super().__init__()
        self.conv = torch.nn.Conv2d(len(weights), 1, 1, bias=False)
        with torch.no_grad():
            self.conv.weight[:] = torch.tensor(weights, dtype=torch.float32).reshape(1, -1, 1, 1)

    def forward(self, x):
        return self.conv(x)


def test_integrated_gradients_of_a_linear_model_are_exact():
    x = torch.rand(1, 3, 8, 8)
    model = Linear([2.0, -1.0, 0.0])
    attr, gap = integrated_gradients(model, x, steps=4)
    np.testing.assert_allclose(attr.numpy(), (x[0] * torch.tensor([2.0, -1.0, 0.0])[:, None, None]).numpy(), atol=1e-5)
    assert abs(gap) < 1e-4


def test_marker_percentages_follow_the_weights_and_sum_to_100():
    stack = good_stack()
    card = oracle_card("Ki67")  # inputs DAPI, Lap2, CD3, CK
    model = Linear([3.0, 1.0, 0.0, 0.0])
    result = attribute_marker(model, card, stack, MARKERS, steps=8)
    assert result.markers == ["DAPI", "Lap2", "CD3", "CK"]
    assert sum(result.percent.values()) == pytest.approx(100.0)
    assert result.percent["CD3"] == pytest.approx(0.0) and result.percent["CK"] == pytest.approx(0.0)
    # all inputs are the same pattern after normalisation, so the share is the weight's
    assert result.percent["DAPI"] == pytest.approx(75.0, abs=2.0)
    assert result.correlation.shape == (4, 4) and result.correlation[0, 1] == pytest.approx(1.0, abs=0.05)


def test_attribution_of_the_oracle_is_even_and_windowed():
    stack = good_stack(shape=(80, 80))
    result = attribute_marker(OracleMean(), oracle_card("Ki67"), stack, MARKERS, steps=16, max_size=32,
                              region=Region((0, 0), (80, 80)))
    assert result.window == Region((24, 24), (56, 56)) and result.maps.shape == (4, 32, 32)
    for share in result.percent.values():
        assert share == pytest.approx(25.0, abs=3.0)
    assert abs(result.completeness) < 0.05 * float(np.abs(result.maps).sum())


def test_average_precision_matches_the_hand_computed_value():
    _, _, ap = precision_recall(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1]))
    assert ap == pytest.approx(0.5 + 0.5 * 2 / 3)
    _, _, tied = precision_recall(np.array([1, 0]), np.array([0.5, 0.5]))
    assert tied == pytest.approx(0.5)
    assert np.isnan(precision_recall(np.array([1, 1]), np.array([0.1, 0.2]))[2])


def _cells():
    labels = np.zeros((40, 40), np.int32)
    acquired = np.zeros((40, 40), np.float32)
    values = [0.9, 0.1, 0.8, 0.2, 0.7, 0.15]
    for i, v in enumerate(values):
        y, x = divmod(i, 3)
        labels[4 + 18 * y:12 + 18 * y, 4 + 12 * x:10 + 12 * x] = i + 1
        acquired[labels == i + 1] = v
    return labels, acquired, values


def test_cell_means_mae_and_ap_on_known_cells():
    labels, acquired, values = _cells()
    imputed = acquired * 0.5  # keeps the order of cells, halves their means
    result = evaluate_cells(acquired, imputed, labels, threshold=0.5, baselines={"BL-Zero": np.zeros_like(acquired)})
    assert result.n_cells == 6 and result.n_positive == 3
    np.testing.assert_allclose(result.acquired, values, atol=1e-6)
    assert result.mae == pytest.approx(np.mean(values) * 0.5, abs=1e-6)
    assert result.average_precision == pytest.approx(1.0)
    assert result.baselines["BL-Zero"]["mae"] == pytest.approx(np.mean(values), abs=1e-6)
    assert result.baselines["BL-Zero"]["average_precision"] == pytest.approx(0.5)
    # Otsu's threshold separates the bright from the dim cells by itself
    assert 0.2 < evaluate_cells(acquired, imputed, labels).threshold < 0.7


def test_expanding_nuclei_into_cells_changes_the_means():
    labels, acquired, _ = _cells()
    expanded = evaluate_cells(acquired, acquired, labels, expand_px=2)
    assert expanded.acquired[0] < 0.9  # now includes background around the nucleus
    assert expanded.mae == pytest.approx(0.0)


def test_cell_evaluation_rejects_bad_labels():
    labels, acquired, _ = _cells()
    with pytest.raises(InputError, match="label image is 20x40"):
        evaluate_cells(acquired, acquired, labels[:20])
    with pytest.raises(InputError, match="no cells"):
        evaluate_cells(acquired, acquired, np.zeros_like(labels))
    with pytest.raises(InputError, match="float32 values"):
        evaluate_cells(acquired, acquired, labels.astype(np.float32))
