"""Quantization: shared numerics, calibration, Q/DQ placement, weight-only and fp16 conversion.

Module map:

* :mod:`.qparams` — integer types, scale/zero-point computation (per tensor,
  per channel, per block), quantize/dequantize in numpy. Every quantizing pass
  uses these, so the rounding and clipping rules exist once.

Static int8 quantization (``quantize-static``):

* :mod:`.layers` — weighted linear layers (Conv/Gemm/MatMul): weight axes, bias.
* :mod:`.placement` — where Q/DQ pairs go so onnxruntime fuses integer kernels.
* :mod:`.observers` — streaming statistics (min/max, moving averages,
  histograms) and the range methods (minmax, percentile, entropy, mse).
* :mod:`.calibration` — one in-graph, streaming calibration pass; statistics files.
* :mod:`.weights`, :mod:`.qdq` — integer weights, int32 biases, writing Q/DQ nodes.
* :mod:`.opset` — verified opset conversion for per-channel Q/DQ.
* :mod:`.sensitivity`, :mod:`.holdout` — output metrics, per-layer sensitivity,
  mixed precision (``max_drop``) on held-out samples.
* :mod:`.sqnr_report` — per-tensor SQNR of the quantized model against float.
* :mod:`.transformer` — recognizing transformer blocks (attention, Softmax,
  LayerNorm) and normalized tensors, for the transformer placement scheme.
* :mod:`.smoothing` — SmoothQuant (activation outliers into weights), shared
  with dynamic int8: factors, strength search on simulated error.
* :mod:`.static` — the steps put together (:class:`~.static.StaticQuantizer`).

Dynamic int8 (``quantize-dynamic``): :mod:`.dynamic` (also the run-time
quantized layers of the static transformer scheme).
"""
