"""The library's rules, framework-free: validation, the functional core (lookup, renorm, gradient),
bags, initializers, vocab-parallel sharding, row-sparse gradients and their optimizers."""
