"""Real English sentences, harvested from the Python standard library's docstrings.

The docstrings of a fixed list of standard-library modules (the module, its
public classes and functions, and their public methods) are split into
sentences and filtered to plain prose: 5-40 words, mostly letters, no code.
The corpus therefore depends on the Python version, but for one interpreter it
is fully deterministic (it does not depend on hash randomisation).

Sentences are assigned to the ``"calib"`` or ``"eval"`` split by a hash of
their text, so the splits are disjoint, and ordered by that hash, which mixes
modules.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import logging
import re
import warnings

import numpy as np

logger = logging.getLogger(__name__)

#: Modules whose docstrings are harvested (importing them has no side effects).
MODULES = (
    "abc", "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "cmd", "codecs",
    "collections", "concurrent.futures", "configparser", "contextlib", "copy", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "email.message", "enum", "filecmp",
    "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "gzip",
    "heapq", "hmac", "html.parser", "http.client", "http.cookiejar", "http.server",
    "imaplib", "inspect", "io", "ipaddress", "json", "logging", "logging.handlers",
    "mailbox", "mimetypes", "multiprocessing", "netrc", "numbers", "operator", "optparse",
    "os", "pathlib", "pdb", "pickle", "pkgutil", "platform", "plistlib", "pprint",
    "pydoc", "queue", "random", "re", "sched", "secrets", "selectors", "shelve", "shlex",
    "shutil", "smtplib", "socket", "socketserver", "sqlite3", "ssl", "statistics",
    "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit",
    "tokenize", "trace", "traceback", "typing", "unittest", "urllib.parse",
    "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.dom.minidom",
    "xml.etree.ElementTree", "zipfile",
)

SPLITS = ("calib", "eval")

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_CODE_HINTS = re.compile(r">>>|::|\w\(|\w_\w|[=<>{}\[\]|`*#@\\$~^]|\.\w|\w\.\w|\s-{1,2}\w")
_ALLOWED = re.compile(r"^[A-Za-z][A-Za-z0-9 ,;:'\"()/-]*[A-Za-z0-9)'\"]\.$")


def _docstrings(module_name: str):
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        logger.debug("stdlib module %s not importable; skipped", module_name)
        return
    yield inspect.getdoc(module)
    for name in sorted(vars(module)):
        if name.startswith("_"):
            continue
        obj = getattr(module, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        yield inspect.getdoc(obj)
        if inspect.isclass(obj):
            for meth_name in sorted(vars(obj)):
                meth = vars(obj)[meth_name]
                if not meth_name.startswith("_") and inspect.isfunction(meth):
                    yield inspect.getdoc(meth)


def _sentences(doc: str):
    for paragraph in re.split(r"\n\s*\n", doc):
        lines = paragraph.splitlines()
        # Skip indented blocks (code, option tables) and doctest paragraphs.
        if any(line.startswith((" ", "\t")) for line in lines) or ">>>" in paragraph:
            continue
        yield from _SENTENCE_END.split(" ".join(line.strip() for line in lines))


def _is_prose(sentence: str) -> bool:
    words = sentence.split()
    if not 5 <= len(words) <= 40 or not _ALLOWED.match(sentence):
        return False
    if _CODE_HINTS.search(sentence):
        return False
    letters = sum(c.isalpha() for c in sentence)
    return letters >= 0.75 * len(sentence)


def _hash(sentence: str) -> bytes:
    return hashlib.sha1(sentence.encode("utf-8")).digest()


@functools.cache
def _corpus() -> dict[str, tuple[str, ...]]:
    seen: set[str] = set()
    with warnings.catch_warnings():
        # Reading some attributes (e.g. typing.io) emits DeprecationWarning.
        warnings.simplefilter("ignore")
        for module_name in MODULES:
            for doc in _docstrings(module_name):
                for sentence in _sentences(doc or ""):
                    sentence = sentence.strip()
                    if _is_prose(sentence):
                        seen.add(sentence)
    ordered = sorted(seen, key=_hash)
    splits = {split: tuple(s for s in ordered if _hash(s)[-1] % 2 == i)
              for i, split in enumerate(SPLITS)}
    logger.debug("harvested %d sentences (%s)", len(ordered),
                 {k: len(v) for k, v in splits.items()})
    return splits


def documentation_sentences(n: int, split: str = "calib") -> list[str]:
    """Returns real English sentences from standard-library documentation.

    Args:
        n: Number of sentences; at most the size of the split (about 1300
            each on CPython 3.11).
        split: ``"calib"`` or ``"eval"``; the two never share a sentence.

    Returns:
        ``n`` sentences in a fixed order (the first ``k`` are the same for
        any ``n >= k``).

    Raises:
        ValueError: If the split is unknown or has fewer than ``n`` sentences.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    sentences = _corpus()[split]
    if n > len(sentences):
        raise ValueError(f"only {len(sentences)} {split} sentences available, asked for {n}")
    return list(sentences[:n])


def text_lines(n: int, split: str = "calib", max_chars: int = 30) -> list[str]:
    """Returns short text lines for OCR, made of words from real sentences.

    The words of the split's sentences, in order, are cut into lines whose
    target length is drawn between ``max_chars // 2`` and ``max_chars``
    (deterministic in ``split``; a line may span two sentences). Characters
    that the PP-OCRv5 recogniser cannot output are dropped, so every line is
    readable in principle.

    Args:
        n: Number of lines.
        split: ``"calib"`` or ``"eval"``; built from disjoint sentences.
        max_chars: Maximum line length in characters.

    Returns:
        ``n`` non-empty lines without leading or trailing spaces.
    """
    from .models import ppocr_dictionary

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    charset = set(ppocr_dictionary()[1:])
    rng = np.random.default_rng(SPLITS.index(split))
    low = max(1, max_chars // 2)
    lines: list[str] = []
    line = ""
    target = int(rng.integers(low, max_chars + 1))
    for sentence in _corpus()[split]:
        for word in sentence.split():
            word = "".join(c for c in word if c in charset)
            if not 0 < len(word) <= max_chars:
                continue
            if line and len(line) + 1 + len(word) > target:
                lines.append(line)
                if len(lines) == n:
                    return lines
                line = ""
                target = int(rng.integers(low, max_chars + 1))
            line = f"{line} {word}" if line else word
    raise ValueError(f"only {len(lines)} {split} text lines available, asked for {n}")
