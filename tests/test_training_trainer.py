"""The Trainer: it learns, stops, resumes, saves atomically, records a card, trains GANs."""

import threading

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_virtual_stain.errors import InputError
from napari_virtual_stain.models.checkpoint import load_checkpoint, read_checkpoint
from napari_virtual_stain.training.starting import model_for_training
from napari_virtual_stain.training.trainer import TrainConfig, Trainer

from conftest import nan_loss_at_call



def _cells(seed=0, spatial=(64, 64)):
    """Input: blurred, noisy spots; targets: the sharp spots and their edges."""
    rng = np.random.default_rng(seed)
    spots = ndimage.gaussian_filter((rng.random(spatial) > 0.985).astype(np.float32), 1.5)
    spots /= spots.max()
    x = (ndimage.gaussian_filter(spots, 1.0) * 50 + 100 + rng.normal(0, 1, spatial)).astype(np.float32)[None]
    edges = ndimage.gaussian_gradient_magnitude(spots, 1.0)
    return x, np.stack([spots, edges]).astype(np.float32)


def _tiny(n_out=2, dims=2, **arch):
    torch.manual_seed(0)  # the initial weights must not depend on which tests ran before
    args = dict(depth=2, base=4, norm="batch")
    args.update(arch)
    return model_for_training(arch="unet", n_in=1, n_out=n_out, spatial_dims=dims, arch_args=args,
                              input_names=["brightfield"], output_names=["nuclei", "membrane"][:n_out])


def _config(**kw):
    base = dict(patch=(32, 32), batch_size=4, steps=6, val_every=3, preview_every=2, lr=3e-3, val_fraction=0.3)
    base.update(kw)
    return TrainConfig(**base)


def test_a_tiny_unet_overfits_a_tiny_pair():
    x, y = _cells()
    model, card = _tiny()
    trainer = Trainer(model, card, [x], [y], _config(steps=40, val_every=40, lr=1e-2))
    result = trainer.run()
    train = [loss for _, loss in result.history["train"]]
    assert np.mean(train[-5:]) < 0.5 * np.mean(train[:5])
    val = dict(result.history["val"])
    assert val[40] < val[0]  # validation (held-out rows) improves too
    assert result.reason == "steps" and not result.stopped and result.steps == 40


def test_updates_carry_losses_eta_and_previews():
    x, y = _cells()
    model, card = _tiny()
    updates, progress = [], []
    Trainer(model, card, [x], [y], _config()).run(progress=lambda d, t: progress.append((d, t)),
                                                  on_update=updates.append)
    assert [u.step for u in updates] == [1, 2, 3, 4, 5, 6]
    assert progress[-1] == (6, 6)
    assert updates[0].val_step == 0 and updates[2].val_step == 3 and updates[2].scores is not None
    assert updates[-1].eta_s == 0 and updates[0].eta_s > 0 and updates[0].sec_per_step > 0
    previews = [u.preview for u in updates if u.preview is not None]
    assert len(previews) == 3 and previews[0].shape == (2, 32, 32)
    assert 0 <= previews[0].min() and previews[0].max() <= 1


def test_stop_ends_normally_keeps_the_best_model_and_leaves_a_loadable_checkpoint(tmp_path):
    x, y = _cells()
    model, card = _tiny()
    cancel = threading.Event()

    def stop_at_four(update):
        if update.step == 4:
            cancel.set()

    trainer = Trainer(model, card, [x], [y], _config(steps=100))
    result = trainer.run(cancel=cancel, on_update=stop_at_four)
    assert result.stopped and result.reason == "stopped" and result.steps == 4
    best = trainer.best_state
    assert all(torch.equal(v.cpu(), best[k]) for k, v in trainer.model.state_dict().items())
    path = trainer.save(tmp_path / "stopped.pt")
    loaded, saved_card = load_checkpoint(path)
    assert saved_card.training["steps"] == 4 and saved_card.training["stopped_by"] == "stopped"
    assert all(torch.equal(v, best[k]) for k, v in loaded.state_dict().items())


def test_resume_continues_from_the_saved_step(tmp_path):
    x, y = _cells()
    model, card = _tiny()
    first = Trainer(model, card, [x], [y], _config(steps=4))
    first.run()
    path = first.save(tmp_path / "run.pt")
    assert path.with_suffix(".state.pt").is_file()

    model2, card2 = _tiny()
    second = Trainer(model2, card2, [x], [y], _config(steps=8))
    second.resume(path)
    assert second.step == 4
    assert all(torch.equal(v.cpu(), first.last_state[k]) for k, v in second.model.state_dict().items())
    result = second.run()
    assert result.steps == 8
    assert [s for s, _ in result.history["train"]] == list(range(1, 9))
    assert [s for s, _ in result.history["val"]] == [0, 3, 4, 6, 8]  # 4: the end of the first run


def test_a_failed_save_leaves_the_previous_file_loadable(tmp_path, monkeypatch):
    x, y = _cells()
    model, card = _tiny()
    trainer = Trainer(model, card, [x], [y], _config(steps=2))
    trainer.run()
    path = trainer.save(tmp_path / "model.pt")
    before = path.read_bytes()

    real_save = torch.save

    def crash_halfway(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 half a zip file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_halfway)
    with pytest.raises(OSError, match="disk full"):
        trainer.save(path)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before
    _, card_back = load_checkpoint(path)
    assert card_back.training["steps"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model.state.pt"]  # no temp files left


def test_best_and_last_checkpoints_are_written_during_the_run(tmp_path):
    x, y = _cells()
    model, card = _tiny()
    config = _config(steps=6, best_path=str(tmp_path / "best.pt"), last_path=str(tmp_path / "last.pt"),
                     checkpoint_every=2)
    result = Trainer(model, card, [x], [y], config).run()
    best_card, _ = read_checkpoint(tmp_path / "best.pt")
    last_card, _ = read_checkpoint(tmp_path / "last.pt")
    assert last_card.training["steps"] == 6
    assert best_card.scores["validation_loss"] == pytest.approx(result.best_val_loss)


def test_early_stopping_when_validation_does_not_improve():
    x, y = _cells()
    model, card = _tiny(norm="group")  # no running statistics: with lr 0 nothing changes
    result = Trainer(model, card, [x], [y], _config(steps=30, lr=0.0, patience=2, val_every=2)).run()
    assert result.reason == "early_stopping" and result.steps == 4 and result.best_step == 0


def test_card_records_data_settings_scores_and_target_normalisation():
    x, y = _cells()
    x2, y2 = _cells(seed=2, spatial=(96, 80))  # another size: validation tiles of two shapes
    y_partial = [y2[0], None]
    model, card = _tiny()
    result = Trainer(model, card, [x, x2], [y, y_partial], _config(steps=3, loss="ssim_l1", alpha=0.8)).run()
    trained = result.card
    assert trained.training["data"]["pairs"] == 2 and trained.training["data"]["shapes"] == [[64, 64], [96, 80]]
    assert trained.training["data"]["pairs_with_target"] == {"nuclei": 2, "membrane": 1}
    assert trained.training["config"]["loss"] == "ssim_l1" and trained.training["config"]["alpha"] == 0.8
    assert trained.training["steps"] == 3
    assert set(trained.scores["validation"]) == {"nuclei", "membrane"}
    assert set(trained.scores["validation"]["nuclei"]) == {"ssim", "psnr", "pcc", "mae"}
    stats = trained.extra["target_normalisation"]["stats"]
    assert stats[1][1] is None and stats[0][0]["high"] > stats[0][0]["low"]


def test_minutes_limit_and_no_validation():
    x, y = _cells()
    model, card = _tiny()
    result = Trainer(model, card, [x], [y], _config(steps=None, max_minutes=1e-3, val_fraction=0)).run()
    assert result.reason == "minutes" and result.best_val_loss is None and result.steps >= 1


@pytest.mark.parametrize("gan", ["vanilla", "lsgan", "wgan-gp"])
def test_adversarial_training_2d(gan):
    x, y = _cells()
    model, card = _tiny()
    updates = []
    trainer = Trainer(model, card, [x], [y], _config(steps=3, gan=gan, critic_width=4, n_critic=2))
    critic_before = {k: v.clone() for k, v in trainer.critic.state_dict().items()}
    trainer.run(on_update=updates.append)
    assert all(np.isfinite([u.train_loss, u.critic_loss, u.gen_adv_loss]).all() for u in updates)
    assert any(not torch.equal(v, critic_before[k]) for k, v in trainer.critic.state_dict().items())
    if gan == "wgan-gp":
        assert isinstance(trainer.optimizer, torch.optim.RMSprop)
        assert all(np.isfinite([u.wasserstein, u.gradient_penalty]).all() for u in updates)


def test_wgan_gp_in_3d_with_a_missing_channel():
    rng = np.random.default_rng(1)
    x = rng.random((1, 8, 40, 32)).astype(np.float32)
    y = [ndimage.gaussian_filter(x[0], 1), None]
    model, card = _tiny(dims=3)
    updates = []
    config = _config(patch=(8, 16, 16), steps=3, gan="wgan-gp", critic_width=4, n_critic=2, val_fraction=0.4)
    Trainer(model, card, [x, x], [[y[0], y[0]], y], config).run(on_update=updates.append)
    assert len(updates) == 3
    assert all(np.isfinite([u.train_loss, u.critic_loss, u.wasserstein, u.gradient_penalty]).all() for u in updates)


def test_channels_that_do_not_match_the_model_are_refused():
    x, y = _cells()
    model, card = _tiny()
    with pytest.raises(InputError, match="expects 1 input channel\\(s\\) \\(brightfield\\) but the chosen input has 2"):
        Trainer(model, card, [np.concatenate([x, x])], [y], _config())
    with pytest.raises(InputError, match="predicts 2 channel\\(s\\) \\(nuclei, membrane\\) but 1 target channel"):
        Trainer(model, card, [x], [y[:1]], _config())
    with pytest.raises(InputError, match="smaller than the 128x128 training patch"):
        Trainer(model, card, [x], [y], _config(patch=(128, 128)))
    with pytest.raises(InputError, match="Unknown loss"):
        Trainer(model, card, [x], [y], _config(loss="l7"))


def test_non_finite_steps_are_skipped_and_repeated_ones_stop_the_run():
    x, y = _cells()
    model, card = _tiny(norm="group")
    trainer = Trainer(model, card, [x], [y], _config(steps=4, val_fraction=0))
    real_loss = trainer.loss_fn
    nan_loss_at_call(trainer, 2)
    updates = []
    before = {}

    def watch(u):
        updates.append(u)
        if u.step == 1:
            before.update({k: v.clone() for k, v in trainer.model.state_dict().items()})
        if u.step == 2:
            assert all(torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())

    result = trainer.run(on_update=watch)
    assert [u.skipped for u in updates] == [False, True, False, False]
    assert result.steps == 4 and result.card.training["skipped_steps"] == 1
    assert [s for s, _ in result.history["train"]] == [1, 3, 4]

    trainer.loss_fn = lambda pred, target, mask: real_loss(pred, target, mask) * float("nan")
    trainer.config.steps = 20
    trainer.total_steps = 20
    with pytest.raises(InputError, match="Training diverged at step 9: the loss or its gradients were not finite 5 steps"):
        trainer.run()
