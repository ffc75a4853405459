"""The peer of our round-to-nearest quantiser: optimum-quanto's weight quantisation.

``optimum-quanto`` (Hugging Face's quantisation backend, ``pip install optimum-quanto``)
quantises ``nn.Linear`` weights to ``qint8`` (symmetric, absmax, one scale per output row)
or ``qint4`` / ``qint2`` (affine min/max in groups of up to 128 input weights, falling back
to one group per row when no multiple of 32 from 128 down divides the width). Its codes
are read back as float weights (``qweight.dequantize()``) into a plain copy of the model, so
the peer is measured exactly as our dequantised RTN is.
"""

from __future__ import annotations

from tokenwise.errors import TokenwiseError
from tokenwise.evaluate.compressed import (
    DENSE_BITS,
    Compressed,
    copy_model,
    linear_layers,
    summarise,
)
from tokenwise.models import LanguageModel

#: Bit widths optimum-quanto quantises weights to.
QUANTO_BITS = (2, 4, 8)


def quanto_quantize(model: LanguageModel, *, bits: int = 4) -> Compressed:
    """A copy of ``model`` with its block linear layers quantised by optimum-quanto and read
    back as float weights (the head and embeddings stay dense, as in :func:`quantize`).

    Args:
        model: the model to quantise.
        bits: 8 (qint8, per row, symmetric), 4 or 2 (qint4 / qint2, grouped, affine).

    Example:
        >>> from tokenwise.models import load
        >>> out = quanto_quantize(load("tw-small"), bits=8)  # doctest: +SKIP
        >>> out.info["method"]  # doctest: +SKIP
        'quanto-qint8'
    """
    if isinstance(bits, bool) or bits not in QUANTO_BITS:
        raise TokenwiseError(f"bits={bits!r}: optimum-quanto quantises weights to "
                             f"{', '.join(map(str, QUANTO_BITS))} bits")
    try:
        from optimum.quanto import qint2, qint4, qint8
        from optimum.quanto.nn import QLinear
    except ImportError as exc:
        raise TokenwiseError("the quantiser peer needs optimum-quanto: pip install "
                             "optimum-quanto") from exc
    qtype = {2: qint2, 4: qint4, 8: qint8}[bits]
    out = copy_model(model, f"{model.name}-quanto{bits}")
    layers = linear_layers(out.hf_model)
    total, group_sizes = 0, set()
    for _name, mod in layers:
        # one quanto module at a time, on its own: the model itself stays a plain float model
        q = QLinear.from_module(mod, weights=qtype)
        weight = q.qweight.dequantize().to(mod.weight.dtype)
        mod.weight.data.copy_(weight)
        group = q.weight_group_size or mod.in_features
        group_sizes.add(group)
        # qint8: one 16-bit scale per row; qint4/2: a 16-bit scale and a 16-bit shift per group
        extra = DENSE_BITS if bits == 8 else 2 * DENSE_BITS
        total += mod.weight.numel() * bits + (mod.weight.numel() // group) * extra
    import optimum.quanto as quanto

    settings = {"method": f"quanto-qint{bits}", "bits": bits,
                "group_size": sorted(group_sizes), "symmetric": bits == 8,
                "library": f"optimum-quanto {getattr(quanto, '__version__', '?')}",
                "include_head": False, "base_model": model.name}
    return Compressed(out, summarise(out, layers, total, settings))
