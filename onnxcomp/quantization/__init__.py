"""Quantization: shared numerics, calibration, Q/DQ placement, weight-only and fp16 conversion.

Module map:

* :mod:`.qparams` — integer types, scale/zero-point computation (per tensor,
  per channel, per block), quantize/dequantize in numpy. Every quantizing pass
  uses these, so the rounding and clipping rules exist once.
"""
