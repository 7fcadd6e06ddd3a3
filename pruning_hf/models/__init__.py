"""Per-family knowledge of decoder-only models: where the layers and projections are, how to shrink
them, where they compute (devices, accelerate offload), and the embedded offline models."""
