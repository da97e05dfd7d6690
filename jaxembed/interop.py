"""Loading identical tables from and back to torch: ``torch.nn.Embedding``/``EmbeddingBag``,
torch modules, state_dicts, Hugging Face model directories, ``.safetensors`` files, torch
checkpoints, numpy/JAX arrays; and writing fine-tuned tables into a copy of a checkpoint. torch,
safetensors and transformers are imported only inside the functions that need them."""

from jaxembed._src.interop import (
    Checkpoint,
    embedding_keys,
    load_embeddings,
    load_linen_embeddings,
    load_safetensors,
    save_checkpoint,
    save_safetensors,
    table_of,
    to_linen,
    to_nnx,
    to_torch,
    torch_options,
)

__all__ = [
    "Checkpoint",
    "embedding_keys",
    "load_embeddings",
    "load_linen_embeddings",
    "load_safetensors",
    "save_checkpoint",
    "save_safetensors",
    "table_of",
    "to_linen",
    "to_nnx",
    "to_torch",
    "torch_options",
]
