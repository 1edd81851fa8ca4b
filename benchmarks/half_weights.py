"""A model file with its float32 tensors stored in fp16, for bringing weights back from a lent GPU.

    python benchmarks/half_weights.py IN.safetensors OUT.safetensors

A returned file may have at most 16 MiB; a decoder stage of a wider VQ-VAE is larger in float32
(96 channels: 20 MB). `load_model` reads fp16 tensors into the float32 networks, the shipped
VQ-VAEs are stored so anyway, and a CPU run can resume training from the file.
"""

from __future__ import annotations

import sys

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def main(source: str, target: str) -> None:
    with safe_open(source, framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    halved = {k: v.half() if v.dtype == torch.float32 else v for k, v in tensors.items()}
    save_file(halved, target, metadata=metadata)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
