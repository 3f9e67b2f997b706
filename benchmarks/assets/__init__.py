"""Real models and real inputs for onnxcomp benchmarks and slow tests, offline.

Importing this package needs only numpy and Pillow; ``torch``,
``transformers``, ``tokenizers``, ``onnxruntime`` and ``scikit-image`` are
imported by the functions that use them. See ``README.md`` for provenance,
licences and the cache location.
"""

from .cache import atomic_path, cache_dir, cached
from .images import ImagePreprocess, center_crop, photo_crops, photo_folds, photo_names, preprocess
from .models import (
    EFFICIENTNET_LITE1_PREPROCESS,
    efficientnet_lite1_onnx,
    minilm_dir,
    minilm_onnx,
    minilm_tokenize,
    model_info,
    ppocr_dictionary,
    ppocr_model,
    sentence_embeddings,
)
from .ocr import (
    char_accuracy,
    cls_preprocess,
    ctc_greedy_decode,
    det_preprocess,
    edit_distance,
    ocr_fonts,
    rec_preprocess,
    render_line,
    render_page,
    resize_bilinear,
    vary_lighting,
)
from .text import documentation_sentences, text_lines

__all__ = [
    "EFFICIENTNET_LITE1_PREPROCESS",
    "ImagePreprocess",
    "atomic_path",
    "cache_dir",
    "cached",
    "center_crop",
    "char_accuracy",
    "cls_preprocess",
    "ctc_greedy_decode",
    "det_preprocess",
    "documentation_sentences",
    "edit_distance",
    "efficientnet_lite1_onnx",
    "minilm_dir",
    "minilm_onnx",
    "minilm_tokenize",
    "model_info",
    "ocr_fonts",
    "photo_crops",
    "photo_folds",
    "photo_names",
    "ppocr_dictionary",
    "ppocr_model",
    "preprocess",
    "rec_preprocess",
    "render_line",
    "render_page",
    "vary_lighting",
    "resize_bilinear",
    "sentence_embeddings",
    "text_lines",
]
