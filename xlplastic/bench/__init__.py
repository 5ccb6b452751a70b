"""Benchmarks: `xlplastic bench train` (throughput vs HF PyTorch) and `xlplastic bench memory` (FSDP state bytes)."""
