"""The MAXIM dock driven as a user would: marker layers or one stack layer, click, wait."""

from __future__ import annotations

import numpy as np
import pytest

from napari_virtual_stain.models.checkpoint import save_checkpoint
from napari_virtual_stain.tasks.maxim import stack_marker_stats
from napari_virtual_stain.widgets import _worker
from napari_virtual_stain.widgets.maxim_widget import CURRENT_VIEW, SEPARATE, WHOLE, MaximWidget
from test_maxim_core import MARKERS, OracleMean, good_stack, oracle_card


@pytest.fixture
def model_dir(tmp_path):
    stats = stack_marker_stats(good_stack(seed=1), MARKERS)
    for m in MARKERS:
        save_checkpoint(tmp_path / f"imputer-{m}.pt", OracleMean(), oracle_card(m, stats=stats))
    return tmp_path


@pytest.fixture
def dock(make_napari_viewer, monkeypatch, model_dir):
    messages = []
    for name in ("show_error", "show_info"):
        monkeypatch.setattr(_worker, name, messages.append)
    viewer = make_napari_viewer()
    widget = MaximWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.messages = messages
    return viewer, widget


def click(widget, action, qtbot, timeout=60000):
    action()
    qtbot.waitUntil(lambda: widget.job is not None and not widget.job.running and widget.cancel_button.enabled is False,
                    timeout=timeout)


def _bad_stack():
    stack = good_stack(seed=0)
    stack[2, 16:40, 20:44] = 0
    return stack


def test_qc_from_marker_layers_flags_the_failed_region(dock, qtbot, model_dir):
    viewer, widget = dock
    for name, plane in zip(MARKERS, _bad_stack()):
        viewer.add_image(plane, name=name, scale=(0.5, 0.5), translate=(4, 8))
    viewer.add_image(np.zeros((10, 10)), name="elsewhere")  # another shape: not a default marker
    widget.reset_choices()
    assert widget.source.value == SEPARATE and list(widget.markers.value) == MARKERS
    widget.folder.value = str(model_dir)
    assert sorted(widget.target.choices) == sorted(MARKERS)
    click(widget, widget.qc, qtbot)
    report = widget.last_report
    assert report.flagged == ["CD3"]
    rows = [(widget.table.item(r, 0).text(), widget.table.item(r, 1).text()) for r in range(widget.table.rowCount())]
    assert rows and {m for m, _ in rows} == {"CD3"} and ("CD3", "imputation") in rows
    shapes = viewer.layers["MAXIM · QC flagged regions"]
    assert set(shapes.features["marker"]) == {"CD3"}
    (y0, x0), (y1, x1) = shapes.data[0].min(0), shapes.data[0].max(0)
    # data coordinates of the shapes layer (it carries the image's scale and translate)
    assert 12 <= y0 <= 20 and 36 <= y1 <= 44 and 16 <= x0 <= 24 and 40 <= x1 <= 48
    # clicking the row of the box centres the camera on it, in world coordinates
    row = next(r for r, f in enumerate(widget._rows) if "start" in f)
    widget.table.cellClicked.emit(row, 0)
    cy, cx = viewer.camera.center[-2:]
    assert 4 + 0.5 * 12 <= cy <= 4 + 0.5 * 44 and 8 + 0.5 * 16 <= cx <= 8 + 0.5 * 48
    overlay = viewer.layers["MAXIM · QC disagreement CD3"]
    assert tuple(overlay.scale) == (0.5, 0.5) and tuple(overlay.translate) == (4, 8)
    assert overlay.data[20:36, 24:40].mean() > 3 * viewer.layers["MAXIM · QC disagreement DAPI"].data.mean()
    for name in MARKERS:  # inputs are never modified
        assert viewer.layers[name].data.dtype == np.uint16
    np.testing.assert_array_equal(viewer.layers["CD3"].data, _bad_stack()[2])


def test_qc_without_imputers_runs_the_training_free_checks(dock, qtbot):
    viewer, widget = dock
    stack = good_stack(shape=(128, 128), seed=0)
    stack[2] = np.random.default_rng(0).permutation(stack[2].ravel()).reshape(stack[2].shape)  # CD3: only noise
    viewer.add_image(stack, name="panel", metadata={"channel_names": MARKERS})
    widget.reset_choices()
    widget.source.value = "panel"
    widget.folder.value = ""
    click(widget, widget.qc, qtbot)
    assert hasattr(widget, "last_report"), widget.messages
    report = widget.last_report
    assert report.flagged == ["CD3"] and report.markers == {}
    assert [(widget.table.item(r, 0).text(), widget.table.item(r, 1).text())
            for r in range(widget.table.rowCount())] == [("CD3", "noise")]
    assert widget.table.item(0, 2).text() == "whole channel"


def test_impute_attribution_and_cells_from_one_stack_layer(dock, qtbot, model_dir):
    viewer, widget = dock
    stack = good_stack(seed=0)
    viewer.add_image(stack, name="panel", metadata={"channel_names": MARKERS})
    labels = np.zeros((64, 64), np.int32)
    for i in range(4):
        for j in range(4):
            labels[4 + 15 * i:12 + 15 * i, 4 + 15 * j:12 + 15 * j] = 1 + 4 * i + j
    viewer.add_labels(labels, name="nuclei")
    widget.reset_choices()
    widget.source.value = "panel"
    widget.folder.value = str(model_dir)
    widget.target.value = "Ki67"
    widget.scope.value = WHOLE
    click(widget, widget.impute, qtbot)
    imputed = viewer.layers["panel · Ki67 (imputed)"]
    assert imputed.data.shape == (64, 64)
    assert np.corrcoef(imputed.data.ravel(), stack[3].ravel().astype(float))[0, 1] > 0.95

    click(widget, widget.attribute, qtbot)
    shares = {bar.label: bar.value for bar in widget.bars}
    assert set(shares) == {"DAPI", "Lap2", "CD3", "CK"} and abs(sum(shares.values()) - 100) <= 2

    widget.labels.value = "nuclei"
    click(widget, widget.evaluate_cells, qtbot)
    cells = widget.last_cells
    assert cells.n_cells == 16 and cells.mae < cells.baselines["BL-Zero"]["mae"]
    assert "16 cells" in widget.info.value


def test_current_view_imputes_only_what_is_visible(dock, qtbot, model_dir):
    viewer, widget = dock
    for name, plane in zip(MARKERS, good_stack(shape=(200, 200))):
        viewer.add_image(plane, name=name)
    widget.reset_choices()
    widget.folder.value = str(model_dir)
    widget.target.value = "Ki67"
    widget.scope.value = CURRENT_VIEW
    viewer.camera.center = (60, 60)
    viewer.camera.zoom = 20
    click(widget, widget.impute, qtbot)
    layer = viewer.layers["MAXIM · Ki67 (imputed)"]
    assert layer.data.shape[0] < 200 and layer.data.shape[1] < 200
    y, x = layer.translate
    assert y <= 60 <= y + layer.data.shape[0] and x <= 60 <= x + layer.data.shape[1]


def test_bad_choices_become_sentences(dock, qtbot, model_dir):
    viewer, widget = dock
    stack = good_stack()
    viewer.add_image(stack[0], name="DAPI")
    viewer.add_image(stack[1].astype(np.uint8), name="Lap2")
    widget.reset_choices()
    widget.folder.value = str(model_dir)
    widget.markers.value = ["DAPI", "Lap2"]
    click(widget, widget.qc, qtbot)
    assert any("different pixel types" in str(m) for m in widget.messages)
    widget.markers.value = ["DAPI"]
    click(widget, widget.qc, qtbot)
    assert any("Only one marker" in str(m) for m in widget.messages)


def test_train_imputers_writes_the_joint_imputer_for_every_marker(dock, qtbot, tmp_path):
    viewer, widget = dock
    for name, plane in zip(MARKERS[:3], good_stack()[:3]):
        viewer.add_image(plane, name=name)
    widget.reset_choices()
    out = tmp_path / "trained"
    out.mkdir()
    widget.folder.value = str(out)
    widget.minutes.value = 0
    widget.steps.value = 1
    widget.device.value = "cpu"
    click(widget, widget.train, qtbot, timeout=120000)
    assert sorted(p.name for p in out.glob("*.pt")) == ["joint-imputer.pt"]
    assert sorted(widget.target.choices) == ["CD3", "DAPI", "Lap2"]
    assert "BL-Mean" in widget.info.value


def test_a_blank_area_on_a_real_field_becomes_a_box_and_a_row_that_goes_there(dock, qtbot):
    """Training-free QC of a real MIBI crop (DCIS Point2206, held out from calibration) with keratin
    blanked in one area: the box is a Shapes layer labelled with its class, and its table row centres
    the camera on it."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import qc_fields
    from qc_sabotage import sabotage

    stack, names = qc_fields.load_field("dcis-2206-q3", size=384)
    bad, (y0, x0, y1, x1) = sabotage(stack, names, "PanKRT", "blank_region", seed=0)
    viewer, widget = dock
    viewer.add_image(bad, name="dcis", metadata={"channel_names": names})
    widget.reset_choices()
    widget.source.value = "dcis"
    widget.folder.value = ""
    click(widget, widget.qc, qtbot, timeout=120000)
    assert widget.last_report.flagged == ["PanKRT"], widget.messages
    shapes = viewer.layers["dcis · QC flagged regions"]
    assert list(shapes.features["class"]) == ["blank_region"]
    (by0, bx0), (by1, bx1) = shapes.data[0].min(0), shapes.data[0].max(0)
    assert by0 < y1 and by1 > y0 and bx0 < x1 and bx1 > x0
    widget.table.cellClicked.emit(0, 0)
    cy, cx = viewer.camera.center[-2:]
    assert by0 <= cy <= by1 and bx0 <= cx <= bx1
    assert widget.table.item(0, 1).text() == "blank_region" and "observed" in widget.table.item(0, 3).text()


def test_actions_are_disabled_with_the_reason_and_settings_are_remembered(dock, qtbot, model_dir):
    viewer, widget = dock
    for name, plane in zip(MARKERS, good_stack()):
        viewer.add_image(plane, name=name)
    widget.reset_choices()
    widget.folder.value = ""
    impute, qc = widget.buttons["Imputation"], widget.buttons["Stain QC"]
    assert not impute.enabled and impute.tooltip == "Choose a folder of imputers and the target marker first."
    assert qc.enabled and not widget.buttons["Cell evaluation"].enabled
    widget.markers.value = ["DAPI"]
    assert not qc.enabled and "Only one marker" in qc.tooltip
    widget.markers.value = MARKERS
    widget.folder.value = str(model_dir)
    widget.target.value = "CD3"
    assert impute.enabled and not impute.tooltip
    click(widget, widget.impute, qtbot)
    assert widget.run_state_label.value == "state: done" and "MAXIM · CD3 (imputed)" in viewer.layers
    again = MaximWidget(viewer)  # a new launch remembers what ran
    assert str(again.folder.value) == str(model_dir) and again.target.value == "CD3"
