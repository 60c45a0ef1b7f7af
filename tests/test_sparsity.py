import torch
from torch.testing import assert_close

from saelib.sparsity import SparsityTracker


def test_rolling_mean_over_last_n_steps_and_floor():
    t = SparsityTracker(3, windows=3)
    vals = [torch.tensor([0.1, 0.0, 1.0]), torch.tensor([0.2, 0.0, 1.0]), torch.tensor([0.3, 0.0, 1.0]),
            torch.tensor([0.4, 0.0, 1.0])]
    t.update(vals[0][None], vals[0][None] > 0)
    assert_close(t.rolling()[0], torch.tensor([0.1, 1e-10, 1.0]))  # mean over the one step so far; floored
    for v in vals[1:]:
        t.update(v[None], v[None] > 0)
    assert_close(t.rolling()[0], torch.tensor([0.3, 1e-10, 1.0]))  # (0.2 + 0.3 + 0.4) / 3


def test_runs_with_different_windows_share_one_tracker():
    t = SparsityTracker(2, windows=[1, 3])
    for v in (0.1, 0.2, 0.3, 0.4):
        t.update(torch.full((2, 2), v), torch.ones(2, 2, dtype=torch.bool))
    assert_close(t.rolling(), torch.tensor([[0.4, 0.4], [0.3, 0.3]]))  # last 1 step; mean of the last 3


def test_steps_since_fired_and_dead_mask():
    t = SparsityTracker(2, windows=2)
    for fired in ([True, False], [False, False], [False, False]):
        t.update(torch.zeros(1, 2), torch.tensor([fired]))
    assert t.steps_since_fired_RF.tolist() == [[2, 3]]
    assert t.dead_mask(3).tolist() == [[False, True]]


def test_a_runs_state_round_trips():
    a = SparsityTracker(4, windows=[3, 5])
    for _ in range(6):
        v = torch.rand(2, 4)
        a.update(v, v > 0.5)
    b = SparsityTracker(4, windows=[5, 3])  # the run sits in another slot of another stack
    b.load_run_state(1, {k: v.clone() for k, v in a.run_state(0).items()})
    assert_close(a.rolling()[0], b.rolling()[1])
    for _ in range(4):
        v = torch.rand(4)
        a.update(torch.stack([v, v]), torch.stack([v, v]) > 0.5)
        b.update(torch.stack([v, v]), torch.stack([v, v]) > 0.5)
        assert torch.equal(a.rolling()[0], b.rolling()[1])
