"""The bundled label-free -> nuclei model on a real field it never saw (sephace set2).

``scripts/train_real_stain_models.py`` trains ``label-free-nuclei-2d`` on the left half of
sephace set1 (not set2), fnet-3d and synthetic cells. Here a 256x256 crop of set2, every
focal plane, goes through the Predictor and is compared with the real DAPI of that crop.
"""

from pathlib import Path

import numpy as np
import tifffile

from napari_virtual_stain.engine.normalise import compute_stats, normalise
from napari_virtual_stain.engine.predictor import Predictor
from napari_virtual_stain.models.registry import BUNDLED_DIR, load_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sephace-brightfield-dapi"
MODEL = BUNDLED_DIR / "label-free-nuclei-2d.pt"
CROP = (slice(384, 640), slice(544, 800))  # the middle of the 1024x1344 field: several nuclei


def _pcc(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def test_card_says_what_it_is():
    _, card = load_model("label-free-nuclei-2d")
    assert card.spatial_dims == 2 and card.n_in == 1 and card.output_channels == ["nuclei"]
    assert "set1" in card.training["data"] and "set2" not in card.training["data"]
    assert card.scores["held_out"]["regions"]  # what it scored, per held-out region


def test_prediction_on_an_unseen_field_beats_the_normalised_input():
    model, card = load_model(MODEL)
    planes = tifffile.imread(DATA / "set2_brightfield_ZYX.tif")[(slice(None),) + CROP].astype(np.float32)
    dapi = tifffile.imread(DATA / "set2_dapi_YX.tif")[CROP].astype(np.float32)
    before = planes.copy()
    predictor = Predictor(model, card, device="cpu", precision="fp32")
    model_r, input_r = [], []
    for plane in planes:
        x = plane[None]
        pred = predictor.predict(x)[0]
        assert pred.shape == dapi.shape and np.isfinite(pred).all()
        model_r.append(_pcc(pred, dapi))
        unit = normalise(x, card.input_normalisation, compute_stats(x, card.input_normalisation))[0]
        input_r.append(_pcc(np.clip(unit, 0, 1), dapi))
    np.testing.assert_array_equal(planes, before)  # inputs are never modified
    # The plane's own contrast changes sign with focus (above / below the cells); the
    # model's nuclei follow the DAPI with the right sign on every plane, and on average
    # better than the plane does even with its sign corrected (|r|).
    assert min(input_r) < 0 < max(input_r), input_r
    assert min(model_r) > 0, model_r
    assert np.mean(model_r) > np.mean(input_r)
    assert np.mean(model_r) > np.mean(np.abs(input_r)), (model_r, input_r)
