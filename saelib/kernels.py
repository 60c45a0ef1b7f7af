"""Column sums, firing counts and the fused ReLU + a/(a+eps) with a hand-written backward (the memory-bound
part of a training step). Every function takes a single SAE's (B, F) activations or a stack's (R, B, F).

The L0approx term and s_hat only need the per-feature column sums of a/(a+eps), and the gradient reaching
those sums is one value per feature (v_f), so

    forward:   f = ReLU(pre),  sum_b ratio(f, eps),  sum_b [f > 0],  sum_b f
    backward:  d pre = [f > 0] * (d f + u_f + v_f * eps/(f+eps)^2)

(u_f: the gradient reaching sum_b f, i.e. lambda_1 / n_b for an L1 run). The elementwise parts are plain
functions, in two forms with the same math: `_eager` (few torch ops) and `_fused` (written for fusion);
`use_compile(True)` compiles the fused form into one pass each with torch.compile (a C++ compiler on CPU, Triton
on CUDA), which on a stack of runs is faster than the same ops run one by one (bench/RESULTS.md). Without a
working compiler they run eagerly, with the same results up to float rounding.
"""

from __future__ import annotations

import sys
import warnings

import torch


def colsum(x_BF: torch.Tensor) -> torch.Tensor:
    """Sum over the batch (dim -2) as a matrix product with a row of ones: on CPU, BLAS does this ~10x faster
    than torch's column reduction (`x.sum(-2)`), and on GPU it is as fast. (B, F) -> (F,); (R, B, F) -> (R, F)."""
    return (x_BF.new_ones(1, x_BF.shape[-2]) @ x_BF).squeeze(-2)


def firing_counts(f_BF: torch.Tensor) -> torch.Tensor:
    """Per feature, the number of rows where it fires: f >= 0 after ReLU, so sign(f) is [f > 0] as floats
    (exact below 2^24 rows), summed by `colsum`."""
    return colsum(torch.sign(f_BF))


def _forward_eager(pre_BF: torch.Tensor, eps):
    from .losses import ratio  # the one definition of a/(a+eps)

    f_BF = torch.relu(pre_BF)
    return f_BF, colsum(ratio(f_BF, eps)), firing_counts(f_BF), colsum(f_BF)


def _forward_fused(pre_BF: torch.Tensor, eps):
    # the same quantities, the column sums as reductions that torch.compile fuses into the elementwise pass
    from .losses import ratio

    f_BF = torch.relu(pre_BF)
    return f_BF, ratio(f_BF, eps).sum(-2), torch.sign(f_BF).sum(-2), f_BF.sum(-2)


def _backward_eager(grad_f_BF, f_BF, v_1F, u_1F, eps):
    # d f + u_f + v_f * eps / (f+eps)^2 with few passes: one for the squared denominator, one fused add-divide
    if u_1F is not None:
        grad_f_BF = grad_f_BF + u_1F
    sq_BF = (f_BF + eps).square_()
    g = torch.addcdiv(grad_f_BF, (v_1F * eps).expand_as(sq_BF), sq_BF)
    return torch.ops.aten.threshold_backward(g, f_BF, 0.0)  # ReLU's backward: zero where f = 0


def _backward_fused(grad_f_BF, f_BF, v_1F, u_1F, eps):
    g = grad_f_BF + v_1F * eps / (f_BF + eps) ** 2
    if u_1F is not None:
        g = g + u_1F
    return torch.where(f_BF > 0, g, 0.0)


_KERNELS = {"forward": _forward_eager, "backward": _backward_eager}


def use_compile(on: bool) -> bool:
    """Fuse the elementwise kernels with torch.compile (on) or run them eagerly (off). Returns whether compiled
    kernels are in use: compilation is tried on a small input first, and a failure (no C++ compiler, no Triton)
    falls back to eager with a warning."""
    if not on:
        _KERNELS.update(forward=_forward_eager, backward=_backward_eager)
        return False
    try:
        import torch._inductor.config as inductor_config

        inductor_config.compile_threads = 1  # no compile worker pool: one process, predictable start-up
        fwd = torch.compile(_forward_fused, dynamic=False)
        bwd = torch.compile(_backward_fused, dynamic=False)
        x, eps = torch.randn(2, 3, 8), torch.full((2, 1, 1), 0.2)
        f = fwd(x, eps)[0]
        bwd(x, f, x[:, :1], x[:, :1], eps)
    except Exception as e:  # noqa: BLE001 - any failure of the compiler toolchain means: run eagerly
        warnings.warn(f"torch.compile is not usable here ({type(e).__name__}: {str(e)[:200]}); the training step "
                      "runs its elementwise part eagerly (same results up to rounding, slower)", stacklevel=2)
        return use_compile(False)
    _KERNELS.update(forward=fwd, backward=bwd)
    return True


class ReluRatio(torch.autograd.Function):
    """f = ReLU(pre) with the column sums of a/(a+eps), of [f > 0] and of f (for L0approx / s_hat, the firing
    counts and L1), and the hand-written backward for the gradients reaching f and the two summed terms."""

    @staticmethod
    def forward(ctx, pre_BF: torch.Tensor, eps):
        f_BF, ratio_colsum_F, fired_F, f_colsum_F = _KERNELS["forward"](pre_BF, eps)
        ctx.save_for_backward(f_BF)
        ctx.eps = eps
        ctx.mark_non_differentiable(fired_F)
        return f_BF, ratio_colsum_F, fired_F, f_colsum_F

    @staticmethod
    def backward(ctx, grad_f_BF, grad_ratio_colsum_F, _grad_fired, grad_f_colsum_F):
        f_BF, = ctx.saved_tensors
        if grad_f_BF is None:
            grad_f_BF = torch.zeros_like(f_BF)
        v_1F = (torch.zeros_like(f_BF[..., :1, :]) if grad_ratio_colsum_F is None else grad_ratio_colsum_F.unsqueeze(-2))
        u_1F = None if grad_f_colsum_F is None else grad_f_colsum_F.unsqueeze(-2)
        return _KERNELS["backward"](grad_f_BF, f_BF, v_1F, u_1F, ctx.eps), None


def relu_ratio(pre_BF: torch.Tensor, eps) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(f = ReLU(pre), sum_b a/(a+eps), firing counts, sum_b f), each sum over the batch per feature, with a fused
    backward. For a stack, `eps` is an (R, 1, 1) tensor of each run's eps."""
    return ReluRatio.apply(pre_BF, eps)


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of returning it to the OS (Linux only).

    A training step allocates and frees a dozen (batch x d_sae) tensors of several MB; by default glibc maps
    each with mmap and unmaps it on free, so every step page-faults its working set afresh (bench/RESULTS.md
    has the measurement). Called by the command-line entry points, not on import. Returns whether it applied."""
    import ctypes

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc (musl, ...): keep the default allocator
        return False
