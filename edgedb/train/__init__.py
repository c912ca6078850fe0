"""Fine-tuning DBNet detectors on your own images (optional extra: PyTorch).

``finetune`` (``edgedb train``) starts from any DBNet ONNX edgedb accepts, trains it with
the DB paper's labels and loss on random crops of your images, keeps the checkpoint with
the best validation hmean, and gives back an ONNX with the base model's interface, which
``edgedb rewrite``, ``quantize``, ``build`` and ``EdgeDetector`` take unchanged.

Modules: ``labels`` (shrink and threshold maps), ``data`` (samples, augmentation,
batches), ``onnx_torch`` (the export's graph as a torch module; its operators in
``onnx_ops``, the chains it runs as one torch function in ``onnx_fusions``, the trained
weights written back in ``onnx_export``), ``model`` (plus a threshold head), ``loss`` (the
DB loss), ``trainer`` (the loop), ``qat`` (quantization-aware training by distillation).
Importing this package does not import torch.
"""

from edgedb.train.trainer import FinetuneResult, Scores, finetune

__all__ = ["FinetuneResult", "Scores", "finetune"]
