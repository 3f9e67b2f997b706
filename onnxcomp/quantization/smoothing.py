"""Activation smoothing (SmoothQuant, Xiao et al. 2023), shared by dynamic and static int8.

Per-input-channel outliers of an activation ``x`` read by linear layers are
moved into their weights: with ``s_k = max|x_k|^alpha / max|W_k,:|^(1-alpha)``,
``x @ W = (x / s) @ (diag(s) W)``. The per-tensor activation range that the
integer kernels must cover narrows, the weights (quantized per output
channel) absorb the factors.

The migration strength ``alpha`` is chosen per activation by simulating the
quantized layers in numpy on a few calibration samples (:func:`best_alpha`):
the candidate (or none) with the least relative output error summed over the
layers reading ``x`` wins. The simulation differs by how ``x`` is quantized:
per run from its own min/max (dynamic, :func:`dynamic_matmul_error`) or with
one range over all samples (static, :func:`static_matmul_error`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp.activations import iterate_activations
from onnxcomp.data import Dataset
from onnxcomp.graph import Namer, add_constant, read_constant_uncached
from onnxcomp.progress import ProgressFactory, null_progress

from .qparams import QuantType, dequantize, params_from_range, quantize, weight_params

if TYPE_CHECKING:  # dynamic imports this module
    from .dynamic import WeightLayer

SMOOTH_MIN_SCALE = 1e-5
"""Lower bound of a smoothing factor, so a channel that is always 0 stays finite."""

SMOOTH_CANDIDATES = (0.5, 0.6, 0.7, 0.8, 0.9)
"""Migration strengths ``smoothing=auto`` tries per activation (besides none)."""


class Smoothing(enum.Enum):
    """How activation outliers are migrated into weights."""

    AUTO = "auto"
    FIXED = "fixed"
    OFF = "off"


def smoothing_factors(channel_absmax: np.ndarray, weights: Sequence[np.ndarray], alpha: float) -> np.ndarray:
    """SmoothQuant factors ``s_k`` for an activation read by ``weights`` (each ``[K, N]``).

    ``s_k = a_k^alpha / w_k^(1-alpha)`` with ``a_k = max|x_k|`` and ``w_k`` the
    largest ``|W[k, :]|`` over all readers; channels with no activation or no
    weight keep ``s_k = 1``.
    """
    a = np.asarray(channel_absmax, dtype=np.float64)
    w = np.max([np.abs(np.asarray(m, dtype=np.float64)).max(axis=1) for m in weights], axis=0)
    valid = (a > 0) & (w > 0)
    s = np.ones_like(a)
    s[valid] = a[valid] ** alpha / w[valid] ** (1.0 - alpha)
    return np.maximum(s, SMOOTH_MIN_SCALE).astype(np.float32)


def quantize_weight_columns(weight: np.ndarray, *, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 ``Wq`` and float32 ``Ws`` with ``W ≈ Wq * Ws`` (Ws per column N, or a scalar)."""
    params = weight_params(weight, QuantType.INT8, axis=1 if per_channel else None, symmetric=True)
    return quantize(weight, params), params.scale.astype(np.float32)


def _matmul_error(
    samples: Sequence[np.ndarray], weight: np.ndarray, smooth: np.ndarray | None, per_channel: bool, params_of,
    references: Sequence[np.ndarray] | None,
) -> float:
    w = weight if smooth is None else weight * smooth[:, None]
    wq, ws = quantize_weight_columns(w, per_channel=per_channel)
    w_approx = wq.astype(np.float32) * (ws if ws.ndim == 0 else ws[None, :])
    rows = [x.reshape(-1, x.shape[-1]).astype(np.float32) for x in samples]
    scaled = rows if smooth is None else [x / smooth for x in rows]
    params = params_of(scaled)
    if references is None:
        references = [x @ weight for x in rows]
    total = 0.0
    for y, xs in zip(references, scaled):
        p = params(xs)
        diff = y - dequantize(quantize(xs, p), p) @ w_approx
        total += float(np.sum(diff.astype(np.float64) ** 2))
    return total


def dynamic_matmul_error(
    samples: Sequence[np.ndarray], weight: np.ndarray, smooth: np.ndarray | None, *, per_channel: bool,
    references: Sequence[np.ndarray] | None = None,
) -> float:
    """Squared error of the dynamically quantized layer against float, summed over ``samples``.

    Each sample (an activation ``[..., K]`` of one run) is quantized the way
    DynamicQuantizeLinear does it at run time (uint8, asymmetric, its own
    min/max), after dividing by ``smooth``; the weight as the rewrite stores it.
    ``references``: the float outputs ``x @ weight`` per sample, if known.
    """

    def per_run(_scaled):
        return lambda xs: params_from_range(float(xs.min()), float(xs.max()), QuantType.UINT8, symmetric=False)

    return _matmul_error(samples, weight, smooth, per_channel, per_run, references)


def static_matmul_error(
    samples: Sequence[np.ndarray], weight: np.ndarray, smooth: np.ndarray | None, *, per_channel: bool,
    references: Sequence[np.ndarray] | None = None,
) -> float:
    """Like :func:`dynamic_matmul_error`, with one uint8 range (min/max over all ``samples``)
    for the activation, as static quantization calibrates it."""

    def overall(scaled):
        lo = min(float(xs.min()) for xs in scaled)
        hi = max(float(xs.max()) for xs in scaled)
        fixed = params_from_range(lo, hi, QuantType.UINT8, symmetric=False)
        return lambda xs: fixed

    return _matmul_error(samples, weight, smooth, per_channel, overall, references)


ErrorFunction = Callable[..., float]


def best_alpha(
    samples: list[np.ndarray], absmax: np.ndarray, weights: list[np.ndarray], error: ErrorFunction, *, per_channel: bool
) -> tuple[float | None, list[float]]:
    """The candidate strength (None = no smoothing) with the least relative output error
    summed over the readers, and each reader's relative squared error with it.

    ``error(samples, weight, smooth, per_channel=..., references=...)`` simulates one layer
    (:func:`dynamic_matmul_error` or :func:`static_matmul_error`).
    """
    references = [[x.reshape(-1, x.shape[-1]).astype(np.float32) @ w for x in samples] for w in weights]
    energies = [sum(float(np.sum(y.astype(np.float64) ** 2)) for y in ys) for ys in references]

    def errors(alpha: float | None) -> list[float]:
        smooth = None if alpha is None else smoothing_factors(absmax, weights, alpha)
        return [
            error(samples, w, smooth, per_channel=per_channel, references=ys) / max(energy, 1e-30)
            for w, ys, energy in zip(weights, references, energies)
        ]

    results = {alpha: errors(alpha) for alpha in (None, *SMOOTH_CANDIDATES)}
    best = min(results, key=lambda a: sum(results[a]))
    return best, results[best]


def activation_statistics(
    model: onnx.ModelProto,
    data: Dataset,
    names: list[str],
    keep: int,
    *,
    progress: ProgressFactory = null_progress,
) -> tuple[dict[str, np.ndarray], dict[str, list[np.ndarray]]]:
    """Per-channel (last axis) max |x| over all samples of ``data``, and the first ``keep`` samples of each tensor."""
    absmax: dict[str, np.ndarray] = {}
    samples: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for index, (_, values) in enumerate(iterate_activations(model, data, names, progress=progress, desc="smoothing statistics")):
        for name, value in values.items():
            channel = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            absmax[name] = channel if name not in absmax else np.maximum(absmax[name], channel)
            if index < keep:
                samples[name].append(value)
    return absmax, samples


def choose_factors(
    absmax: dict[str, np.ndarray],
    samples: dict[str, list[np.ndarray]],
    weights: dict[str, list[np.ndarray]],
    mode: Smoothing,
    *,
    fixed_alpha: float,
    error: ErrorFunction,
    per_channel: bool,
) -> tuple[dict[str, np.ndarray], dict[str, float | None], dict[str, list[float]]]:
    """Smoothing factors per activation name (``weights``: activation -> its readers' ``[K, N]``
    weights), the strength chosen for each, and (``auto``) the readers' simulated relative errors."""
    chosen: dict[str, np.ndarray] = {}
    alphas: dict[str, float | None] = {}
    errors: dict[str, list[float]] = {}
    for name, ws in weights.items():
        if name not in absmax:
            continue
        if mode is Smoothing.FIXED:
            alphas[name] = fixed_alpha
        else:
            alphas[name], errors[name] = best_alpha(samples[name], absmax[name], ws, error, per_channel=per_channel)
        if alphas[name] is not None:
            chosen[name] = smoothing_factors(absmax[name], ws, alphas[name])
    return chosen, alphas, errors


def smooth_layers(graph: gs.Graph, namer: Namer, layers: Sequence[WeightLayer], factors: np.ndarray) -> gs.Variable:
    """Divide the activation all ``layers`` read by ``factors`` and multiply their weights by them.

    The division is a ``Mul`` by ``1/s`` whose output only these layers read
    (other readers of the activation keep the original); each layer gets a
    new weight constant ``diag(s) W`` (``W diag(s)`` in the ``[N, K]`` layout
    of a Gemm with ``transB``). Returns the smoothed activation.
    """
    x = layers[0].activation
    base = x.name or "x"
    inverse = add_constant(namer, f"{base}_smooth_inv", (1.0 / factors).astype(np.float32))
    smoothed = gs.Variable(namer(f"{base}_smoothed"), dtype=np.float32, shape=x.shape)
    graph.nodes.append(gs.Node("Mul", namer(f"{base}_Smooth"), inputs=[x, inverse], outputs=[smoothed]))
    for layer in layers:
        stored = read_constant_uncached(layer.weight_tensor)
        scaled = stored * (factors[None, :] if layer.transposed else factors[:, None])
        layer.node.inputs[1] = add_constant(namer, f"{layer.weight_tensor.name}_smoothed", scaled.astype(np.float32))
        layer.node.inputs[0] = smoothed
    return smoothed
