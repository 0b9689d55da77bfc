"""A small, real LoRA adapter for the bundled model, written at test time.

llama.cpp reads an adapter as a GGUF file with ``general.type = adapter``,
``adapter.type = lora``, ``adapter.lora.alpha`` and, for each base tensor ``X`` it
changes, a pair ``X.lora_a`` (ggml shape ``[n_in, rank]``) and ``X.lora_b``
(``[rank, n_out]``), where ``X`` has ggml shape ``[n_in, n_out]``
(llama.cpp's ``llama-adapter.cpp`` and ``convert_lora_to_gguf.py``). The adapter
adds ``alpha / rank * B @ A`` to each such weight.

:func:`make_adapter` writes one with deterministic A/B matrices (a seed picks them)
on the attention query and output projections of the first layers: enough to change
the model's answers, small enough to write in a moment (a few hundred KiB).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_adapter(
    base: Path,
    out: Path,
    *,
    seed: int = 0,
    rank: int = 4,
    alpha: float = 32.0,
    layers: int = 4,
    tensors: tuple[str, ...] = ("attn_q", "attn_output"),
) -> Path:
    """Write a LoRA adapter for the GGUF model ``base`` to ``out`` and return ``out``.

    Args:
        base: the base model (its architecture and tensor shapes are read from it).
        out: where to write the adapter (its directory must exist).
        seed: picks the A/B matrices; two seeds give two different adapters.
        rank: the adapter's rank (1 to 4 is plenty here).
        alpha: LoRA's alpha; the change is scaled by ``alpha / rank``.
        layers: how many of the first blocks get the change.
        tensors: which weights of each block (``blk.N.<name>.weight``).

    Raises:
        KeyError: the base model has none of the named tensors.
    """
    from gguf import GGUFReader, GGUFWriter  # test dependency (the dev extra)

    reader = GGUFReader(str(base))
    arch = reader.fields["general.architecture"].contents()
    shapes = {t.name: [int(n) for n in t.shape] for t in reader.tensors}
    rng = np.random.default_rng(seed)
    writer = GGUFWriter(str(out), arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    written = 0
    for layer in range(layers):
        for name in tensors:
            key = f"blk.{layer}.{name}.weight"
            if key not in shapes:
                continue
            n_in, n_out = shapes[key]
            # numpy shapes are ggml's reversed: A is [rank][n_in], B is [n_out][rank]
            a = (rng.standard_normal((rank, n_in)) / np.sqrt(n_in)).astype(np.float32)
            b = rng.standard_normal((n_out, rank)).astype(np.float32)  # F32: llama.cpp reads no F64
            writer.add_tensor(f"{key}.lora_a", a)
            writer.add_tensor(f"{key}.lora_b", b)
            written += 1
    if not written:
        raise KeyError(f"{base} has none of the tensors {tensors}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
