"""The rolling sparsity estimate and the firing tracker (SPEC "Definitions", rolling sparsity r_f).

Explicit state for a stack of R runs, updated in place once per step (by the trainer, after the loss) and
saved in checkpoints, one slice per run.
"""

from __future__ import annotations

import torch

from .losses import R_FLOOR


class SparsityTracker:
    """Per-run, per-feature state across training steps.

    - a ring buffer of the last `window_r` per-step values of each run (the firing fraction, or s_hat) and
      their running sum, so r_f costs one in-place update per step; runs with a shorter window use the
      first slots of the ring;
    - `steps_since_fired`, for the ghost-gradient dead mask and the live dead count.
    """

    def __init__(self, d_sae: int, windows: list[int] | int, device: torch.device | str = "cpu"):
        windows = [windows] if isinstance(windows, int) else list(windows)
        R, W = len(windows), max(windows)
        self.windows_R = torch.tensor(windows, device=device)
        self.ring_RWF = torch.zeros(R, W, d_sae, device=device)
        self.sum_RF = torch.zeros(R, d_sae, dtype=torch.float64, device=device)  # f64: no drift over 1e5 steps
        self.steps_since_fired_RF = torch.zeros(R, d_sae, dtype=torch.long, device=device)
        self.pos_R = torch.zeros(R, dtype=torch.long, device=device)
        self.filled_R = torch.zeros(R, dtype=torch.long, device=device)
        self._runs = torch.arange(R, device=device)

    @torch.no_grad()
    def update(self, value_RF: torch.Tensor, fired_RF: torch.Tensor) -> None:
        """value_RF: this step's estimate (firing fraction or s_hat) per run; fired_RF: fired at all this step."""
        slot_RF = self.ring_RWF[self._runs, self.pos_R]
        self.sum_RF.add_(value_RF.to(torch.float64) - slot_RF.to(torch.float64))
        self.ring_RWF[self._runs, self.pos_R] = value_RF.to(self.ring_RWF.dtype)
        self.pos_R.add_(1).remainder_(self.windows_R)
        self.filled_R.add_(1).clamp_(max=self.windows_R)
        self.steps_since_fired_RF.add_(1).masked_fill_(fired_RF, 0)

    def rolling(self) -> torch.Tensor:
        """r_f per run (R, F): mean over the last min(steps, window) steps, floored at 1e-10."""
        return (self.sum_RF / self.filled_R.clamp(min=1).unsqueeze(-1)).clamp_min(R_FLOOR).to(self.ring_RWF.dtype)

    def dead_mask(self, dead_window_R1: torch.Tensor | int) -> torch.Tensor:
        return self.steps_since_fired_RF >= dead_window_R1

    # ---- one run's slice, for checkpoints ----

    def run_state(self, r: int) -> dict[str, torch.Tensor]:
        w = int(self.windows_R[r])
        return {"ring_WF": self.ring_RWF[r, :w], "sum_F": self.sum_RF[r],
                "steps_since_fired_F": self.steps_since_fired_RF[r], "pos": self.pos_R[r], "filled": self.filled_R[r]}

    @torch.no_grad()
    def load_run_state(self, r: int, state: dict[str, torch.Tensor]) -> None:
        mine = self.run_state(r)
        for k, v in mine.items():
            if tuple(state[k].shape) != tuple(v.shape):
                raise ValueError(f"sparsity state `{k}` has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}")
            v.copy_(state[k])
