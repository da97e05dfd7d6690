"""The ``flax.nnx`` modules: thin holders of a table that delegate to ``jaxembed._src.core``."""
