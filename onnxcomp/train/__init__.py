"""Training on the ONNX graph itself (needs torch: ``pip install 'onnxcomp[train]'``).

* :class:`GraphModule` (:mod:`.executor`): the graph evaluated by torch, its
  float initializers as named ``nn.Parameter``s (ops in :mod:`.ops`).
* :func:`write_back` / :func:`check_agreement` (:mod:`.writeback`): trained
  values into the same ModelProto, and the executor vs onnxruntime.
* :func:`finetune` (:mod:`.finetune`): distillation fine-tuning of a student
  graph against a teacher run in onnxruntime (also QAT of a Q/DQ model).
"""

from .executor import GraphModule
from .finetune import FinetuneReport, finetune
from .ops import OPS
from .writeback import Agreement, check_agreement, write_back

__all__ = ["OPS", "Agreement", "FinetuneReport", "GraphModule", "check_agreement", "finetune", "write_back"]
