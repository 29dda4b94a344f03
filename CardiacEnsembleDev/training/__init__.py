"""Members: recipes (architectures as data), the training loop, and slice packs."""
