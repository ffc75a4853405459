"""What every compressor returns: a normal model with a record of how it was made.

A compressor (:func:`~tokenwise.evaluate.prune.prune`,
:func:`~tokenwise.evaluate.quantize.quantize`) works on a copy of the model's weights and
returns a :class:`Compressed`: the new :class:`~tokenwise.models.LanguageModel` and its
``info`` (method, settings, which layers, the storage budget in bits). ``save`` writes a plain
Hugging Face directory (``save_pretrained`` weights and tokenizer) plus
``tokenwise_compression.json``, loadable by ``tokenwise.load(path)``.

The weights stay dense floats: zeros where pruned, dequantised values where quantised. The
saved directory is therefore no smaller than the original; ``info["storage_bits"]`` gives the
size the same weights would take in a packed format, counted as stated in
:func:`storage_bits`.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tokenwise.errors import TokenwiseError
from tokenwise.models import LanguageModel

#: File name of the compression record in a saved directory.
RECORD_NAME = "tokenwise_compression.json"
#: Bits of an untouched weight in the storage count (a half-precision checkpoint).
DENSE_BITS = 16
_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def linear_layers(hf_model: torch.nn.Module, *, include_head: bool = False
                  ) -> list[tuple[str, torch.nn.Linear]]:
    """The ``nn.Linear`` layers a compressor works on: every one in the transformer blocks,
    and the output head only when asked (embeddings are never linear layers here).

    Args:
        hf_model: a ``transformers`` causal LM.
        include_head: also the output head (``get_output_embeddings()``).

    Example:
        >>> from tokenwise.models import load
        >>> names = [n for n, _ in linear_layers(load("tw-small").hf_model)]
        >>> names[0], "lm_head" in names
        ('model.layers.0.self_attn.q_proj', False)
    """
    head = hf_model.get_output_embeddings()
    out = []
    for name, module in hf_model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if module is head and not include_head:
            continue
        out.append((name, module))
    if not out:
        raise TokenwiseError(f"{type(hf_model).__name__} has no linear layers to compress")
    return out


def layer_index(name: str) -> int | None:
    """The transformer block a module belongs to (``model.layers.3.mlp`` -> 3), or None.

    Example:
        >>> layer_index("model.layers.12.self_attn.q_proj"), layer_index("lm_head")
        (12, None)
    """
    m = _LAYER_INDEX.search(name)
    return int(m.group(1)) if m else None


def copy_model(model: LanguageModel, name: str) -> LanguageModel:
    """A deep copy of ``model``'s weights under a new name (the tokenizer is shared).

    Args:
        model: the original.
        name: the copy's name in reports.
    """
    return LanguageModel(copy.deepcopy(model.hf_model), model.tokenizer, name)


def storage_bits(numel: int, *, kept: int | None = None, pattern: tuple[int, int] | None = None,
                 bits: int | None = None, groups: int = 0, symmetric: bool = True) -> int:
    """Bits a weight matrix takes in a packed format, by this accounting:

    - dense: ``16`` per weight (half precision);
    - pruned, unstructured: ``16`` per kept weight + a ``1``-bit mask per weight;
    - pruned, N:M: ``16`` per kept weight + ``ceil(log2 M)`` index bits per kept weight
      (2:4 -> 9 bits per weight);
    - quantised to ``b`` bits in groups: ``b`` per weight + per group a 16-bit scale, and a
      ``b``-bit zero point when asymmetric.

    Args:
        numel: weights in the matrix.
        kept: non-zero weights after pruning (None: not pruned).
        pattern: ``(N, M)`` for N:M pruning.
        bits: quantisation bits (None: not quantised).
        groups: quantisation groups.
        symmetric: whether the quantisation stores no zero point.

    Example:
        >>> storage_bits(64, kept=32, pattern=(2, 4)) / 64
        9.0
        >>> storage_bits(64, bits=4, groups=1, symmetric=False) / 64
        4.3125
    """
    if bits is not None:
        return numel * bits + groups * (DENSE_BITS + (0 if symmetric else bits))
    if kept is None:
        return numel * DENSE_BITS
    if pattern is not None:
        return kept * (DENSE_BITS + (pattern[1] - 1).bit_length())
    return kept * DENSE_BITS + numel


@dataclass
class Compressed:
    """A compressed model and the record of how it was made.

    Attributes:
        model: the compressed model (dense float weights).
        info: method, settings, layers touched, parameter counts and the storage budget.
    """

    model: LanguageModel
    info: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: str | Path) -> Path:
        """Write the model as a Hugging Face directory with ``tokenwise_compression.json``.

        Args:
            directory: a new or empty directory.

        Example:
            >>> from tokenwise.evaluate.quantize import quantize
            >>> from tokenwise.models import load
            >>> out = quantize(load("tw-small"), bits=8, group_size=32).save("q8")
            >>> load(str(out)).num_parameters() == load("tw-small").num_parameters()
            True
        """
        path = Path(directory)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise TokenwiseError(f"output directory {str(path)!r} exists and is not empty; "
                                 "give a new or empty directory")
        path.mkdir(parents=True, exist_ok=True)
        self.model.hf_model.save_pretrained(path)
        self.model.tokenizer.save_pretrained(path)
        (path / RECORD_NAME).write_text(json.dumps(self.info, indent=2) + "\n")
        return path


def summarise(model: LanguageModel, touched: list[tuple[str, torch.nn.Linear]],
              touched_bits: int, settings: dict[str, Any]) -> dict[str, Any]:
    """The ``info`` record shared by the compressors.

    Args:
        model: the compressed model.
        touched: the layers the compressor changed.
        touched_bits: their storage in bits (:func:`storage_bits`, summed).
        settings: method and its parameters.
    """
    total = model.num_parameters()
    n_touched = sum(m.weight.numel() for _, m in touched)
    model_bits = touched_bits + (total - n_touched) * DENSE_BITS
    return {
        **settings,
        "layers": len(touched),
        "parameters": total,
        "compressed_parameters": n_touched,
        "bits_per_compressed_weight": round(touched_bits / n_touched, 4),
        "storage_bits": int(model_bits),
        "bits_per_parameter": round(model_bits / total, 4),
        "storage_note": (f"weights are saved as dense {str(model.dtype).removeprefix('torch.')}"
                         ": the directory is not smaller than the original; storage_bits counts"
                         " a packed format (16-bit dense weights; see "
                         "tokenwise.evaluate.compressed.storage_bits)"),
    }
