"""The exception hierarchy of onnxcomp.

Every error a user can cause derives from :class:`OnnxcompError` and carries the
process exit code the CLI uses, so the CLI turns any of them into one line on
stderr and a non-zero exit without a traceback.

Exit codes:
    1  a pass or a check failed on a valid model (a bug or an unsupported graph).
    2  bad usage or bad input: options, recipe, model file, calibration data.
    3  the optimized model failed verification against the original, or broke
       the quality budget.
    4  a requested compression changed nothing (with ``--strict``).
    130  interrupted (SIGINT/SIGTERM).
"""

from __future__ import annotations


class OnnxcompError(Exception):
    """Base of every error onnxcomp raises on purpose."""

    exit_code = 1


class UsageError(OnnxcompError):
    """Bad options or configuration: unknown pass names, invalid option values."""

    exit_code = 2


class RecipeError(UsageError):
    """A recipe file that cannot be read or does not validate."""


class InputError(OnnxcompError):
    """The input model file is missing, unreadable, malformed or unsupported."""

    exit_code = 2


class DataError(OnnxcompError):
    """Calibration or verification data that does not fit the model."""

    exit_code = 2


class OutputError(OnnxcompError):
    """An output cannot be written (refused overwrite, unwritable folder, full disk)."""

    exit_code = 2


class PassError(OnnxcompError):
    """A pass raised, or a check after it failed.

    The message names the failing pass and the passes that ran before it; the
    original exception is chained as ``__cause__``.
    """

    exit_code = 1


class VerificationError(OnnxcompError):
    """The optimized model does not agree with the original within tolerance."""

    exit_code = 3


class TrainingError(OnnxcompError):
    """Training on the graph failed.

    An op the executor does not implement, a graph it cannot evaluate, a
    fine-tune that diverged, or a trained graph that disagrees with onnxruntime.
    """

    exit_code = 1


#: What the CLI says when a run is interrupted before writing anything.
INTERRUPTED = "interrupted; nothing was written"


class Interrupted(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so no ``except Exception`` swallows it.

    The CLI reports it in one line and exits with 130; nothing was written.
    """

    exit_code = 130


class OnnxcompWarning(UserWarning):
    """Warnings from onnxcomp (turned into errors in the test-suite)."""


class QualityError(VerificationError):
    """The optimized model broke the quality budget (its metric fell further than allowed)."""


class NothingCompressedError(OnnxcompError):
    """A requested compression changed nothing and ``strict`` was asked."""

    exit_code = 4
