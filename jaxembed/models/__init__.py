"""Models built on jaxembed tables (not imported by ``import jaxembed``).

* :class:`BertModel`: transformers' ``BertModel`` (MiniLM, BERT, ...) in Flax NNX, with its
  word, position and token-type tables as ``jaxembed.Embed`` (``BertModel.from_pretrained(dir)``),
  and the sentence poolings :func:`mean_pooling` and :func:`cls_pooling`.
"""

from jaxembed.models.bert import (
    BertConfig,
    BertModel,
    EncoderOutput,
    cls_pooling,
    mean_pooling,
)

__all__ = ["BertConfig", "BertModel", "EncoderOutput", "cls_pooling", "mean_pooling"]
