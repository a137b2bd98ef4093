"""Which matmul kernels XLA chose: read from the optimized HLO of a compiled function.

"int8 is faster" is a claim about kernels, not about dtypes: XLA:CPU hands a dot to YNNPACK
(``__ynn_fusion``), to oneDNN (``__onednn$...``) or to its own Eigen emitter, and only the first
two have int8 x int8 -> int32 kernels that use VNNI / AMX. ``dot_kernels`` lists every dot of a
compiled program as ``lhs x rhs -> out (implementation)`` so a benchmark can say which path each
variant took, next to its latency.
"""

from __future__ import annotations

import re
from collections import Counter

_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%(?P<name>[\w.\-]+)\s*\(.*\)\s*->.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%(?P<name>[\w.\-]+)\s*=\s*(?P<dtype>\w+)\[")
_OPERANDS = re.compile(r"\bdot\((?P<args>[^)]*)\)")
_CALLS = re.compile(r"calls=%(?P<callee>[\w.\-]+)")
_KIND = re.compile(r'"kind":"(?P<kind>[^"]+)"')
_CUSTOM_CALL = re.compile(r'custom_call_target="(?P<target>[^"]+)"')


def _implementation(kind: str | None) -> str:
    if kind is None:
        return "xla"
    if "ynn" in kind:
        return "ynnpack"
    if "onednn" in kind.lower():
        return "onednn"
    return kind.strip("_")


def dot_kernels(hlo_text: str) -> dict[str, int]:
    """Counts of ``"s8 x s8 -> s32 (ynnpack)"``-style entries for every dot in ``hlo_text``
    (``jax.jit(f).lower(...).compile().as_text()``), plus matmul custom calls by target."""
    dtypes: dict[str, dict[str, str]] = {}
    caller_kind: dict[str, str | None] = {}
    dots: list[tuple[str, str, list[str]]] = []
    custom: Counter[str] = Counter()
    computation = None
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            computation = header["name"]
            dtypes.setdefault(computation, {})
            # parameters declared in the header: "param_0: s8[32,64]"
            for pname, pdtype in re.findall(r"([\w.\-]+):\s*(\w+)\[", line):
                dtypes[computation][pname] = pdtype
            continue
        instruction = _INSTRUCTION.match(line)
        if not instruction or computation is None:
            continue
        dtypes[computation][instruction["name"]] = instruction["dtype"]
        callee = _CALLS.search(line)
        if callee:
            kind = _KIND.search(line)
            caller_kind[callee["callee"]] = kind["kind"] if kind else None
        target = _CUSTOM_CALL.search(line)
        if target and re.search(r"matmul|gemm|dot", target["target"], re.IGNORECASE):
            custom[target["target"]] += 1
        operands = _OPERANDS.search(line)
        if operands:
            names = [a.strip().lstrip("%").split(" ")[-1].lstrip("%") for a in operands["args"].split(",")]
            dots.append((computation, instruction["dtype"], names))
    counts: Counter[str] = Counter()
    for computation, out, names in dots:
        ins = [dtypes[computation].get(n, "?") for n in names]
        counts[f"{' x '.join(ins)} -> {out} ({_implementation(caller_kind.get(computation))})"] += 1
    counts.update({f"custom call {t}": n for t, n in custom.items()})
    return dict(sorted(counts.items()))
