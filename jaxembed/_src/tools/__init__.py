"""The command-line tools (``jaxembed parity|demo|visualize|bench``) and the torch-vs-JAX runs
behind the parity report. The library never imports this package."""
