"""Float tolerances derived from the computation, shared by every test.

Why a tolerance is needed at all: two float evaluations of the same sum in a
different order (another batch size or thread count picks another BLAS/oneDNN
blocking; one process vs two under DDP; a batched vs a per-image loop; a peer
library) round differently. Standard error analysis (Higham, *Accuracy and
Stability of Numerical Algorithms*, 2nd ed., eq. 3.5 and §4.2): a sum of ``n``
terms in ANY order differs from the exact sum by at most
``gamma_(n-1) * sum |x_i|`` with ``gamma_k = k u / (1 - k u)`` and unit
round-off ``u = eps / 2``. Two orders therefore differ by at most
``(n - 1) * eps * sum |x_i|`` (first order), which we round up to
``n * eps * magnitude`` with ``eps = 2**-23`` for float32.

``magnitude(model, x)`` measures ``sum |x_i|`` for a network: the same forward
pass with every weight, bias and input replaced by its absolute value (eval-mode
batch norm as its absolute affine map), which bounds the partial sums of every
layer and carries them through the later layers exactly as the errors are.

A network output is a chain of such sums (one dot product of ``fan_in`` terms
per Conv/Linear output, one of ``h*w`` terms per pooling mean). To first order
the per-layer errors add up along the chain when the layers in between are
non-expansive at the scale of the compared values (ReLU, max-pool, averages;
eval-mode BN and the weights of these small, seeded test models are O(1)):
``forward_tol = (sum of the reduction lengths) * eps * magnitude``, where
``magnitude`` bounds the partial sums ``sum |w a|`` at the compared scale.
Softmax probabilities move by at most half the largest logit change
(``|dp_c| <= 2 p_c (1 - p_c) max|dz| <= max|dz| / 2``), so the logit bound also
bounds probabilities, insertion/deletion curves and their AUCs (averages).

When ``magnitude`` is not measured (``forward_tol(model)`` with the default 1, scaled by the
compared values via ``scaled_tol``), the bound assumes that the partial sums are of the order
of the compared values. The worst case through a deep network is vacuous (the absolute
network of a random resnet18 reaches ~6e22 at 32 px: BN and residual additions compound), so
comparisons through deep models (tests/test_methods_peers.py) use this first-order form or
the reduction length of the formula after the shared forward pass, and say so.

Discrete outputs (argmax, ``O > Y`` counts) are only compared exactly when the
two sides run the very same kernels on the very same shapes (bitwise
reproducible on one machine and one thread count), or when no tie within the
bound above exists; the tests say which case they rely on.
"""

from __future__ import annotations

import torch
from torch import nn

EPS32 = 2.0**-23  # float32 machine epsilon (spacing of floats in [1, 2))
EPS64 = 2.0**-52  # float64 machine epsilon


def sum_tol(n_terms: int, magnitude: float = 1.0, eps: float = EPS32) -> float:
    """Largest difference between two evaluations of a sum of ``n_terms`` terms
    whose absolute values add up to at most ``magnitude`` (any summation order)."""
    return float(max(int(n_terms), 1)) * eps * float(magnitude)


def reduction_terms(model: nn.Module, spatial: int = 1) -> int:
    """Total reduction length along ``model``: the fan-in of every Conv/Linear output
    (``in_channels/groups * kernel``, ``in_features``) plus ``spatial`` for the final
    global average pool (``h*w`` of the pooled map; 1 when there is none)."""
    terms = int(spatial)
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            terms += (m.in_channels // m.groups) * int(torch.tensor(m.kernel_size).prod())
        elif isinstance(m, nn.Linear):
            terms += m.in_features
    return terms


def magnitude(model: nn.Module, x: torch.Tensor) -> float:
    """Largest output of the "absolute" network ``|W_L| ... |W_1| |x|`` (Conv, Linear and
    eval-mode BatchNorm hooked to act on absolute values; ReLU, pooling and averages of
    non-negative inputs are unchanged). First-order error analysis of a chain of layers
    ``a_l = W_l a_(l-1)`` gives ``|error| <= (sum_l gamma_(n_l)) * |W_L| ... |W_1| |x|``."""
    import torch.nn.functional as F

    def hook(m: nn.Module, args, out):
        a = args[0].abs()
        if isinstance(m, nn.modules.conv._ConvNd):
            w = m.weight.abs()
            b = None if m.bias is None else m.bias.abs()
            fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[w.dim() - 2]
            return fn(a, w, b, m.stride, m.padding, m.dilation, m.groups)
        if isinstance(m, nn.Linear):
            return F.linear(a, m.weight.abs(), None if m.bias is None else m.bias.abs())
        scale = (m.weight if m.weight is not None else 1.0) / torch.sqrt(m.running_var + m.eps)
        shift = (m.bias if m.bias is not None else 0.0) - m.running_mean * scale
        view = (1, -1) + (1,) * (a.dim() - 2)
        return a * scale.abs().view(view) + torch.as_tensor(shift).abs().view(view)

    kinds = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            out = model(x.abs())
    finally:
        for h in handles:
            h.remove()
    return float(out.abs().max())


def forward_tol(model: nn.Module, magnitude: float = 1.0, spatial: int = 1, eps: float = EPS32) -> float:
    """Bound on the difference of ``model``'s outputs (or anything downstream that is
    an average or a probability) between two evaluations that sum in different orders."""
    return sum_tol(reduction_terms(model, spatial), magnitude, eps)


def scaled_tol(rel: float, values: torch.Tensor | float) -> float:
    """``rel`` times the magnitude of the compared values, at least ``rel`` (values of
    order 1 or below keep the absolute bound; percentages and logits scale it up)."""
    mag = float(torch.as_tensor(values).detach().double().nan_to_num(0.0).abs().max()) if torch.is_tensor(values) else abs(float(values))
    return rel * max(1.0, mag)


def assert_within(actual, expected, rel: float, what: str = "") -> None:
    """``|actual - expected| <= scaled_tol(rel, expected)`` elementwise, NaN where NaN."""
    exp = torch.as_tensor(expected).detach().double()
    torch.testing.assert_close(torch.as_tensor(actual).detach().double(), exp, atol=scaled_tol(rel, exp), rtol=0.0,
                               equal_nan=True, msg=lambda m: f"{what}: {m}")


def half_tol(model: nn.Module, eps: float) -> float:
    """Relative bound for a model run in half precision (bf16 ``eps = 2**-7``, fp16 ``2**-10``)
    against float32. CPU (oneDNN) and CUDA accumulate half-precision matmuls/convolutions
    in float32, so the reduction length does not enter; what does is one rounding
    (``eps / 2``) of each layer's weight, input and output, and one per other leaf module
    (activations, pooling) and functional op (assumed at most 4)."""
    leaves = [m for m in model.modules() if not list(m.children())]
    dense = sum(isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) for m in leaves)
    return (3 * dense + (len(leaves) - dense) + 4) * eps / 2


BF16_EPS = 2.0**-7
FP16_EPS = 2.0**-10
