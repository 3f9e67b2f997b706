"""``python -m onnxcomp`` runs the command line."""

from onnxcomp.cli import entry

entry()
