"""``python -m onnxcomp`` and the ``onnxcomp`` script: the command line.

:func:`entry` imports the command line inside a guard, so Ctrl-C while numpy, onnx and
onnxruntime load gives the same one line and exit code 130 as later on.
"""

import sys

from onnxcomp.errors import INTERRUPTED


def entry() -> None:
    try:
        from onnxcomp.cli import main
    except KeyboardInterrupt:
        sys.stderr.write(f"onnxcomp: error: {INTERRUPTED}\n")
        sys.exit(130)
    sys.exit(main())


if __name__ == "__main__":
    entry()
