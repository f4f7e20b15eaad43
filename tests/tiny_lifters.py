"""Tiny lifter sizes shared by the method tests (fast to train, every backbone exercised)."""

TINY_LIFTER_SIZES = {
    "mlp": {"hidden": 32, "num_blocks": 1},
    "cnn": {"channels": 24, "num_blocks": 1},
    "gcn": {"hidden": 8, "num_blocks": 1},
    "transformer": {"dim": 16, "depth": 1, "heads": 2, "ff_dim": 32},
}
