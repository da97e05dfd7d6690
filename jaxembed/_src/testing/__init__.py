"""``jaxembed.testing``'s implementation (the public names are in ``jaxembed/testing.py``)."""
