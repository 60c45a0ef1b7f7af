import torch
from torch.testing import assert_close

from saelib.sparsity import SparsityTracker


def test_rolling_mean_over_last_n_steps_and_floor():
    t = SparsityTracker(3, window=3)
    vals = [torch.tensor([0.1, 0.0, 1.0]), torch.tensor([0.2, 0.0, 1.0]), torch.tensor([0.3, 0.0, 1.0]),
            torch.tensor([0.4, 0.0, 1.0])]
    t.update(vals[0], vals[0] > 0)
    assert_close(t.rolling(), torch.tensor([0.1, 1e-10, 1.0]))  # mean over the one step so far; floored
    for v in vals[1:]:
        t.update(v, v > 0)
    assert_close(t.rolling(), torch.tensor([0.3, 1e-10, 1.0]))  # (0.2 + 0.3 + 0.4) / 3


def test_steps_since_fired_and_dead_mask():
    t = SparsityTracker(2, window=2)
    for fired in ([True, False], [False, False], [False, False]):
        t.update(torch.zeros(2), torch.tensor(fired))
    assert t.steps_since_fired_F.tolist() == [2, 3]
    assert t.dead_mask(3).tolist() == [False, True]


def test_state_round_trip():
    a = SparsityTracker(4, window=3)
    for i in range(5):
        v = torch.rand(4)
        a.update(v, v > 0.5)
    b = SparsityTracker(4, window=3)
    b.load_state_dict({k: v.clone() for k, v in a.state_dict().items()})
    assert_close(a.rolling(), b.rolling())
    v = torch.rand(4)
    a.update(v, v > 0.5)
    b.update(v, v > 0.5)
    assert torch.equal(a.rolling(), b.rolling())
