"""The ``flax.linen`` modules: thin holders of a table that delegate to ``jaxembed._src.core``."""
