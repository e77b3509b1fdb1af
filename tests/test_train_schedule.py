"""The trainers' shared length, optimizer and learning-rate schedule (``train_common``), held to
torch's own MultiStepLR and to hand tables, and the settings' checks."""
import logging
import math
from dataclasses import dataclass, field

import pytest
import torch

from t2i_data.config import construct, parse_overrides
from t2i_data.errors import T2IError
from t2i_models.train_autoencoder import TrainConfig, to_float_images
from t2i_models.train_clip import ClipTrainConfig
from t2i_models.train_common import (Progress, clip_gradients, lr_at, make_optimizer, set_lr, torch_settings, torch_threads,
                                     total_steps)
from t2i_models.train_prior import PriorTrainConfig


@dataclass
class S:
    """The schedule fields every trainer config has."""
    lr: float = 1.0
    lr_schedule: str = "multistep"
    milestones: list = field(default_factory=list)
    lr_gamma: float = 0.1
    warmup: int = 0
    steps: int = 0
    epochs: int = 0
    optimizer: str = "adam"
    weight_decay: float = 0.0
    restarts: list = field(default_factory=list)


@pytest.mark.parametrize("lr,milestones,gamma", [(0.01, [5, 10], 0.1),  # Table 6 (MD-MNIST dVAE): 0.01, ×0.1 at 5 and 10
                                                  (1e-3, [5, 10], 0.1),  # Table 7 (G1 / G2)
                                                  (1e-3, [20], 0.1),  # Table 8 (CLIP)
                                                  (0.3, [0, 2, 3, 7], 0.5), (2e-4, [], 0.1)])
def test_multistep_equals_torch_multisteplr_stepped_once_per_epoch(lr, milestones, gamma):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=gamma)
    cfg = S(lr=lr, milestones=milestones, lr_gamma=gamma)
    per_epoch = 3
    for epoch in range(16):
        for b in range(per_epoch):
            assert lr_at(cfg, epoch * per_epoch + b, epoch, 16 * per_epoch) == opt.param_groups[0]["lr"], (epoch, b)
        opt.step()
        sched.step()


def test_cosine_and_constant_by_hand_and_warmup_on_every_schedule():
    cos = S(lr_schedule="cosine", warmup=10)
    # warmup (step + 1) / 10, then 0.1 + 0.9 · ½(1 + cos(π t)), t = (step - 10) / 90: the prior's schedule before issue 17
    table = {0: 0.1, 4: 0.5, 9: 1.0, 10: 1.0, 55: 0.55, 100: 0.1, 150: 0.1}
    assert {s: round(lr_at(cos, s, 0, 100), 12) for s in table} == table
    assert lr_at(cos, 30, 0, 100) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 20 / 90)), abs=1e-15)
    const = S(lr=2.0, lr_schedule="constant", warmup=4)
    assert [lr_at(const, s, 0, 10) for s in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert [lr_at(S(lr=2.0, lr_schedule="constant"), s, 9, 10) for s in (0, 9)] == [2.0, 2.0]
    step = S(lr=1.0, milestones=[1], lr_gamma=0.5, warmup=4)  # warmup multiplies the step schedule's factor
    assert [lr_at(step, s, e, 10) for s, e in [(0, 0), (1, 0), (2, 1), (3, 1), (4, 1)]] == [0.25, 0.5, 0.375, 0.5, 0.5]


def test_linear_with_restarts_equals_torch_linearlr_in_sequence():
    """The DALL·E reproduction's schedule (seed 004, §2.2.2) over all of its 50,000 steps, against
    torch's SequentialLR of LinearLRs: the warmup (0.1 → 1 in 9 steps), then from each peak a line
    to 0 at the next restart or the end (1 → 0, 0.6 → 0, 0.5 → 0 of lr 3e-3)."""
    import warnings

    cfg = S(lr=3e-3, lr_schedule="linear", warmup=10, steps=50000, restarts=[[10000, 1.8e-3], [25000, 1.5e-3]])
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=3e-3)
    L = torch.optim.lr_scheduler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SequentialLR steps each LinearLR with an epoch argument
        sched = L.SequentialLR(opt, [L.LinearLR(opt, 0.1, 1.0, 9), L.LinearLR(opt, 1.0, 0.0, 9990), L.LinearLR(opt, 0.6, 0.0, 15000),
                                     L.LinearLR(opt, 0.5, 0.0, 25000)], milestones=[10, 10000, 25000])
        for step in range(50000):
            assert lr_at(cfg, step, 0, 50000) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-18), step
            opt.step()
            sched.step()
    assert lr_at(cfg, 50000, 0, 50000) == 0.0
    plain = S(lr=1.0, lr_schedule="linear", warmup=2)  # no restarts: one line to 0 at the run's end
    assert [lr_at(plain, s, 0, 6) for s in range(7)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]


def test_a_restart_scales_with_each_groups_base_rate():
    a, b = torch.nn.Parameter(torch.ones(1)), torch.nn.Parameter(torch.ones(1))
    cfg = S(lr=1e-3, lr_schedule="linear", restarts=[[4, 5e-4]])
    opt = make_optimizer(cfg, [{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 1e-2}], torch.device("cpu"))
    assert set_lr(opt, cfg, 4, 0, 8) == [5e-4, pytest.approx(5e-3)]  # the restart's rate is the lr group's; ×10 for the other
    assert set_lr(opt, cfg, 6, 0, 8) == [2.5e-4, pytest.approx(2.5e-3)]


def test_restarts_are_checked():
    base = dict(image_tokens="a", text_tokens="b", out="c", steps=100, warmup=10)
    bad = [(dict(restarts=[[50, 1e-3]]), "restarts are for lr_schedule=linear"),
           (dict(lr_schedule="linear", restarts=[[50]]), r"restarts are \[step, rate\] pairs"),
           (dict(lr_schedule="linear", restarts=[[10, 1e-3]]), "after the warmup.s first line \\(warmup 10: at least step 11\\), got 10"),
           (dict(lr_schedule="linear", restarts=[[50.5, 1e-3]]), "must be a whole optimizer step .*got 50.5"),
           (dict(lr_schedule="linear", restarts=[[50, 0.0]]), "a restart's rate must be > 0, got 0.0 at step 50"),
           (dict(lr_schedule="linear", restarts=[[60, 1e-3], [50, 1e-3]]), r"increasing steps, got steps \[60, 50\]"),
           (dict(lr_schedule="linear", restarts=[[100, 1e-3]]), r"restart at step 100 is not before the run's end \(steps=100\)")]
    for kw, message in bad:
        with pytest.raises(T2IError, match=message):
            PriorTrainConfig(**base, **kw)
    ok = PriorTrainConfig(**base, lr_schedule="linear", restarts=((50, 1), (70, 2e-4)))
    assert ok.restarts == [[50, 1.0], [70, 2e-4]]
    values = dict(base, **parse_overrides(["lr_schedule=linear", "restarts=[[50, 0.001]]"]))
    assert construct(PriorTrainConfig, values).restarts == [[50, 0.001]]
    with pytest.raises(T2IError, match="--restarts: needs a list"):
        construct(PriorTrainConfig, dict(values, restarts=50))


def test_length_steps_wins_over_epochs():
    assert total_steps(S(steps=7, epochs=3), 10) == 7
    assert total_steps(S(epochs=3), 10) == 30


def test_settings_are_checked_with_one_message():
    base = dict(images="a", out="b")
    with pytest.raises(T2IError, match="steps=N or epochs=N needed"):
        TrainConfig(**base)
    with pytest.raises(T2IError, match="steps=N or epochs=N needed"):
        PriorTrainConfig(image_tokens="a", text_tokens="b", out="c")
    assert ClipTrainConfig(image_tokens="a", text_tokens="b", autoencoder="c", out="d").epochs == 30  # Table 8
    bad = [(dict(lr_schedule="step"), "lr_schedule must be one of multistep, cosine, constant, linear, got 'step'"),
           (dict(optimizer="sgd"), "optimizer must be one of adam, adamw, got 'sgd'"),
           (dict(milestones=[10, 5]), r"milestones must increase .* got \[10, 5\]"),
           (dict(milestones=[5, 5]), r"milestones must increase"),
           (dict(milestones=[-1]), r"milestones are epochs, whole numbers >= 0, got \[-1\]"),
           (dict(lr_gamma=0.0), "lr_gamma must be > 0"), (dict(lr=-1.0), "lr must be > 0"),
           (dict(grad_clip=-1.0), "grad_clip must be >= 0"), (dict(warmup=-2), "warmup must be >= 0, got -2"),
           (dict(codebook_lr=-0.1), "codebook_lr must be >= 0")]
    for kw, message in bad:
        with pytest.raises(T2IError, match=message):
            TrainConfig(steps=5, **base, **kw)
    cfg = TrainConfig(epochs=30, milestones=(5, 10), **base)
    assert cfg.milestones == [5, 10] and cfg.lr_schedule == "constant" and cfg.optimizer == "adam"
    p = PriorTrainConfig(image_tokens="a", text_tokens="b", out="c", steps=1)
    assert (p.optimizer, p.lr_schedule, p.warmup, p.weight_decay) == ("adamw", "cosine", 500, 0.01)


def test_milestones_from_toml_or_override_are_type_checked():
    values = dict(images="a", out="b", epochs=30, **parse_overrides(["milestones=[5,10]", "lr_schedule=multistep"]))
    assert construct(TrainConfig, values).milestones == [5, 10]
    for wrong, message in [(5, "needs a list, e.g. \\[5, 10\\]"), ([5, -1], "needs a list of whole numbers of at least 0"),
                           ([1.5], "needs a list of whole numbers"), ([True], "needs a list of whole numbers")]:
        with pytest.raises(T2IError, match=f"--milestones: {message}"):
            construct(TrainConfig, dict(values, milestones=wrong))


def test_optimizer_groups_follow_the_schedule_from_their_own_base_rates():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = make_optimizer(S(lr=1e-3, optimizer="adamw", weight_decay=0.01), [{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 1e-2}],
                         torch.device("cpu"))
    assert type(opt) is torch.optim.AdamW and opt.param_groups[0]["weight_decay"] == 0.01 and not opt.param_groups[0]["fused"]
    sched = S(lr=1e-3, milestones=[2], lr_gamma=0.1)
    assert set_lr(opt, sched, 0, 1, 10) == [1e-3, 1e-2] and set_lr(opt, sched, 5, 2, 10) == [1e-3 * 0.1, 1e-2 * 0.1]
    assert [g["lr"] for g in opt.param_groups] == [1e-3 * 0.1, 1e-2 * 0.1]
    assert type(make_optimizer(S(), [{"params": [a], "lr": 1.0}], torch.device("cpu"))) is torch.optim.Adam


def test_gradient_clipping_returns_the_norm_before_clipping():
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    assert clip_gradients([p], 0.0) is None and p.grad.tolist() == [3.0, 4.0]  # 0 = off
    norm = clip_gradients([p], 1.0)
    assert float(norm) == 5.0 and torch.allclose(p.grad, torch.tensor([0.6, 0.8]), atol=1e-6)


def test_cpu_threads_leave_a_core_per_loader_worker_and_come_back():
    assert torch_threads(1, cores=2) == 1 and torch_threads(0, cores=2) == 2 and torch_threads(4, cores=16) == 12
    assert torch_threads(2, local_world=2, cores=16) == 6 and torch_threads(8, cores=2) == 1
    before = torch.get_num_threads()
    with torch_settings(torch.device("cpu"), 64):
        pass
    assert torch.get_num_threads() == before


def test_off_a_terminal_progress_is_one_plain_line_per_logging_step(caplog):
    p = Progress(200, 0, 0, "train prior")  # pytest captures stderr: not a terminal
    with caplog.at_level(logging.INFO):
        p.show(50, loss=0.123456, lr=0.001)
    p.close()
    assert "train prior: step 50/200 (25%) loss 0.1235 lr 0.001" in caplog.text


def test_uint8_images_become_floats_in_0_1_and_floats_pass():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1)
    y = to_float_images(x)
    assert y.dtype == torch.float32 and torch.equal(y.flatten(), torch.tensor([0.0, 51 / 255, 1.0]))
    f = torch.rand(1, 3, 2, 2)
    assert to_float_images(f) is f


def test_a_training_split_as_held_out_set_is_warned_and_test_or_val_splits_are_not(caplog):
    from t2i_models.train_common import warn_if_not_heldout

    for split, train in (("test", "train"), ("val2017", "train2017"), (None, "train")):
        warn_if_not_heldout("eval_images", "data/x", split, train)
    assert caplog.records == []
    warn_if_not_heldout("eval_images", "data/x/train", "train", "train")
    warn_if_not_heldout("eval_image_tokens", "data/t/train2017", "train2017", "train")
    warn_if_not_heldout("eval_images", "data/x/extra", "extra", "extra")
    assert [r.getMessage() for r in caplog.records] == [
        "eval_images=data/x/train is the train split, a training split; held-out figures need the test or validation split",
        "eval_image_tokens=data/t/train2017 is the train2017 split, a training split; held-out figures need the test or validation split",
        "eval_images=data/x/extra is the extra split, a training split; held-out figures need the test or validation split"]
