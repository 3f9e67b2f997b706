"""The passes onnxcomp ships, one module per pass.

Installed as ``onnxcomp.passes``. The registry that maps user-facing names to
these classes is :mod:`onnxcomp.registry`.
"""
