"""The rolling sparsity estimate and the firing tracker (SPEC "Definitions", rolling sparsity r_f).

Both are explicit state, updated in place once per step and saved in checkpoints.
"""

from __future__ import annotations

import torch

R_FLOOR = 1e-10  # r_f is floored here so that log10(r_f) stays finite (dead features sit at -10)


class SparsityTracker:
    """Per-feature state across training steps.

    - a ring buffer of the last `window` per-step values (the firing fraction, or s_hat) and their
      running sum, so the rolling mean r_f costs one in-place update per step;
    - `steps_since_fired`, for the ghost-gradient dead mask and the live dead count.
    """

    def __init__(self, d_sae: int, window: int, device: torch.device | str = "cpu"):
        self.window = window
        self.ring_WF = torch.zeros(window, d_sae, device=device)
        self.sum_F = torch.zeros(d_sae, dtype=torch.float64, device=device)  # f64: no drift over 1e5 steps
        self.steps_since_fired_F = torch.zeros(d_sae, dtype=torch.long, device=device)
        self.pos = 0
        self.filled = 0

    @torch.no_grad()
    def update(self, value_F: torch.Tensor, fired_F: torch.Tensor) -> None:
        """value_F: this step's estimate (firing fraction or s_hat); fired_F: bool, fired at all this step."""
        slot = self.ring_WF[self.pos]
        self.sum_F.add_(value_F.to(torch.float64) - slot.to(torch.float64))
        slot.copy_(value_F)
        self.pos = (self.pos + 1) % self.window
        self.filled = min(self.filled + 1, self.window)
        self.steps_since_fired_F.add_(1).masked_fill_(fired_F, 0)

    def rolling(self) -> torch.Tensor:
        """r_f: mean over the last min(steps, window) steps, floored at 1e-10."""
        return (self.sum_F / max(self.filled, 1)).clamp_min(R_FLOOR).to(self.ring_WF.dtype)

    def dead_mask(self, dead_window: int) -> torch.Tensor:
        return self.steps_since_fired_F >= dead_window

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"ring_WF": self.ring_WF, "sum_F": self.sum_F, "steps_since_fired_F": self.steps_since_fired_F,
                "pos": torch.tensor(self.pos), "filled": torch.tensor(self.filled)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k in ("ring_WF", "sum_F", "steps_since_fired_F"):
            if state[k].shape != getattr(self, k).shape:
                raise ValueError(f"sparsity state `{k}` has shape {tuple(state[k].shape)}, "
                                 f"expected {tuple(getattr(self, k).shape)}")
            getattr(self, k).copy_(state[k])
        self.pos = int(state["pos"])
        self.filled = int(state["filled"])
