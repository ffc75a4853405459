"""The fused loss's Triton kernels compile for a Hopper GPU (sm_90) without spilling registers.

No GPU is needed: Triton's compiler builds the kernels for an sm_90 target here and the
``cuobjdump`` shipped in Triton's wheel reads each binary's registers and stack (spills). This
catches what the CPU interpreter cannot: code that only fails to compile for a GPU, and tile
candidates that would spill (a forward that compared whole tiles with the targets spilled
0.4-2 KB at every tile size). Pointers and integer arguments are marked divisible by 16, as
Triton specialises them at run time for aligned tensors and widths like 2304.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

triton = pytest.importorskip("triton")

from tokenwise.training import linear_ce_triton as K  # noqa: E402

if K.interpreting():
    pytest.skip("the kernels are interpreted in this process", allow_module_level=True)

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                         "cuobjdump")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not os.path.exists(CUOBJDUMP), reason="Triton's wheel has no cuobjdump here")]

TARGET = GPUTarget("cuda", 90, 32)
BF16 = "*bf16"
FWD_TYPES = dict(E=BF16, C=BF16, Bias=BF16, Rows="*i64", Tgt="*i32", PartMax="*fp32",
                 PartSum="*fp32", PartW="*fp32", ColSum="*fp32", M="i32", V="i32", D="i32",
                 chunk_v="i32",
                 M_BIN="i32", stride_e0="i32", stride_e1="i32", stride_c0="i32",
                 stride_c1="i32", softcap="fp32")
BWD_TYPES = dict(E=BF16, C=BF16, Bias=BF16, Rows="*i64", Lse="*fp32", A="*fp32", Thr="*fp32",
                 TgtPlace="*i32", Order="*i64", Keep="*u8", GradE="*fp32", GradC="*fp32",
                 GradB="*fp32",
                 M="i32", n_cols="i32", D="i32", row0="i32", col0="i32", keep_stride="i32",
                 V_ALL="i32", M_BIN="i32", stride_e0="i32", stride_e1="i32", stride_c0="i32",
                 stride_c1="i32", softcap="fp32")
# the filtered backward's two passes (the benchmark's and a training step's path)
PASSES = {
    "pass C": dict(HAS_ORDER=True, WRITE_KEEP=True, READ_KEEP=False, COMPUTE_DE=False,
                   COMPUTE_DC=True, DC_BY_COLUMN=False, COMPUTE_DB=False),
    "pass E": dict(HAS_ORDER=True, WRITE_KEEP=False, READ_KEEP=True, COMPUTE_DE=True,
                   COMPUTE_DC=False, DC_BY_COLUMN=False, COMPUTE_DB=False),
}


def compile_usage(fn, types: dict, consts: dict, warps: int, stages: int) -> dict:
    """Compile ``fn`` for sm_90 and return its registers and stack bytes per thread."""
    names = fn.arg_names
    signature = {n: "constexpr" if n in consts else types[n] for n in names}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n, t in types.items()
             if n not in consts and (t.startswith("*") or t == "i32")}
    src = ASTSource(fn, signature, constexprs={(names.index(k),): v for k, v in consts.items()},
                    attrs=attrs)
    compiled = triton.compile(src, target=TARGET,
                              options={"num_warps": warps, "num_stages": stages})
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"tw_{fn.__name__}_{os.getpid()}.cubin")
    with open(path, "wb") as fh:
        fh.write(compiled.asm["cubin"])
    try:
        out = subprocess.run([CUOBJDUMP, "-res-usage", path], capture_output=True, text=True,
                             check=True).stdout
    finally:
        os.remove(path)
    usage = {k: int(v) for k, v in re.findall(r"(REG|STACK):(\d+)", out)}
    assert usage, out
    return usage


def _options(spec: tuple, fp32_dots: bool) -> dict:
    b, v, d, _, _ = spec
    # every option on: the most live values, so the worst case for registers
    return dict(BLOCK_B=b, BLOCK_V=v, BLOCK_D=d, stride_e1=1, stride_c1=1,
                DOT_PRECISION="ieee" if fp32_dots else "tf32", HAS_BIAS=True, HAS_SOFTCAP=True,
                HAS_ROWS=True)


# the dtypes of e and c for each kind of operands
DTYPES = {"16": ("*bf16", "*bf16"), "fp32": ("*fp32", "*fp32"), "mixed": ("*bf16", "*fp32"),
          "mixed, fp32 e": ("*fp32", "*bf16")}


def _types(types: dict, operands: str) -> dict:
    e, c = DTYPES[operands]
    return {**types, "E": e, "Bias": e, "C": c}


def _cases(kind: str) -> list:
    return [(operands, spec) for (k, kinds), specs in K._SPECS.items() if k == kind
            for operands in ([kinds] if kinds != "mixed" else [kinds, "mixed, fp32 e"])
            for spec in specs]


@pytest.mark.parametrize(("operands", "spec"), _cases("forward"))
def test_forward_candidates_compile_without_spills(operands, spec):
    usage = compile_usage(K._lse_kernel, _types(FWD_TYPES, operands),
                          {**_options(spec, operands != "16"), "HAS_ENTROPY": True,
                           "HAS_COLSUM": True}, *spec[3:])
    assert usage["STACK"] == 0, (spec, usage)


@pytest.mark.parametrize(("operands", "spec"), _cases("backward"))
@pytest.mark.parametrize("name", sorted(PASSES))
def test_backward_candidates_compile_without_spills(operands, spec, name):
    usage = compile_usage(K._backward_kernel, _types(BWD_TYPES, operands),
                          {**_options(spec, operands != "16"), "GROUP_B": K._GROUP_B,
                           **PASSES[name]}, *spec[3:])
    assert usage["STACK"] == 0, (spec, name, usage)


def test_helper_kernels_compile():
    target = compile_usage(
        K._target_logit_kernel,
        dict(E=BF16, C=BF16, Bias=BF16, Rows="*i64", Tgt="*i64", Out="*fp32", M="i32", D="i32",
             stride_e0="i32", stride_e1="i32", stride_c0="i32", stride_c1="i32",
             softcap="fp32"),
        dict(BLOCK_T=16, BLOCK_D=128, HAS_BIAS=True, HAS_SOFTCAP=True, HAS_ROWS=True,
             stride_e1=1, stride_c1=1), 4, 2)
    store = compile_usage(K._store_rows_kernel,
                          dict(Src="*fp32", Dst=BF16, Index="*i64", n_rows="i32", D="i32",
                               stride_dst="i32"),
                          dict(HAS_INDEX=True, BLOCK_R=32, BLOCK_D=128), 4, 2)
    assert target["STACK"] == store["STACK"] == 0
