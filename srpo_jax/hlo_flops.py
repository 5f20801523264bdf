"""Matmul FLOPs of a compiled HLO module, counted from its text (for XLA:GPU, whose
compile-only client has no cost analysis).

A dot's FLOPs are 2 x (output elements) x (product of the lhs contracting dimensions). Dots
appear as `dot(...)` instructions (inside Triton GEMM fusions and elsewhere) and as cuBLAS
custom calls (`__cublas$gemm`, `__cublas$lt$matmul`), whose contracting dimensions are in the
backend config. A computation's count is its own dots plus, for each instruction that calls
other computations, their counts, times the trip count for while-loop bodies (XLA writes
`known_trip_count` on loops it has analysed; a loop without one counts once, an undercount
said by the caller's label). Fused attention custom calls (cuDNN) are counted by the caller
from the model shape, not here: their FLOPs depend on the mask, which the call hides.
"""

from __future__ import annotations

import math
import re

_COMP_RE = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_PARAM_RE = re.compile(r"([\w.\-]+):\s*(?:pred|[sfu]\d+|bf16|f8e\w+)\[([\d,]*)\]")
_CALLS_RE = re.compile(r"\b(calls|to_apply|body|condition)=%?([\w.\-]+)")
_BRANCHES_RE = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP_RE = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_LHS_CONTRACT_RE = re.compile(r"lhs_contracting_dims=\{([\d,]*)\}")
_CUBLAS_CONTRACT_RE = re.compile(r'"lhs_contracting_dimensions":\[([^\]]*)\]')
_GEMM_TARGETS = ('"__cublas$gemm"', '"__cublas$lt$matmul"')


def _dims(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


_DEF_RE = re.compile(
    r"^(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\(?\s*(?:pred|[sfu]\d+|bf16|f8e\w+)\[([\d,]*)\]"
)
_OPERAND_RE = re.compile(r"(?:dot|custom-call)\(\s*%?([\w.\-]+)")


def _instruction_flops(line: str, shapes: dict[str, list[int]]) -> int:
    """FLOPs of one dot or cuBLAS GEMM instruction line (0 for anything else). Operands are
    printed by name, so their shapes come from `shapes` (every instruction's result)."""
    if " dot(" in line:
        contract = _LHS_CONTRACT_RE.search(line)
    elif "custom-call(" in line and any(t in line for t in _GEMM_TARGETS):
        contract = _CUBLAS_CONTRACT_RE.search(line)
    else:
        return 0
    result, operand = _DEF_RE.match(line), _OPERAND_RE.search(line)
    if contract is None or result is None or operand is None or operand.group(1) not in shapes:
        return 0
    lhs_dims = shapes[operand.group(1)]
    k = math.prod(lhs_dims[int(i.strip().strip('"'))] for i in contract.group(1).split(",") if i)
    return 2 * math.prod(_dims(result.group(2))) * k


def _parse(hlo_text: str):
    """-> (entry name, {computation: (own flops, [(callee, multiplier)])})."""
    comps: dict[str, tuple[int, list[tuple[str, int]]]] = {}
    entry, current, own, calls = "", None, 0, []
    shapes: dict[str, list[int]] = {}
    for raw in hlo_text.splitlines():
        line = raw.strip()
        if current is None:
            for param, dims in _PARAM_RE.findall(line):
                shapes[param] = _dims(dims)
            m = _COMP_RE.match(line)
            if m and "=" not in line.split("(")[0]:
                current, own, calls = m.group(2), 0, []
                if m.group(1):
                    entry = current
            continue
        if line == "}":
            comps[current] = (own, calls)
            current = None
            continue
        d = _DEF_RE.match(line)
        if d:
            shapes[d.group(1)] = _dims(d.group(2))
        own += _instruction_flops(line, shapes)
        trip = _TRIP_RE.search(line)
        for kind, callee in _CALLS_RE.findall(line):
            calls.append((callee, int(trip.group(1)) if (trip and kind == "body") else 1))
        for group in _BRANCHES_RE.findall(line):
            calls.extend((c.strip().lstrip("%"), 1) for c in group.split(",") if c.strip())
    return entry, comps


def dot_flops(hlo_text: str) -> int:
    """Total matmul FLOPs of one execution of the module's entry computation."""
    entry, comps = _parse(hlo_text)
    memo: dict[str, int] = {}

    def total(name: str) -> int:
        if name not in memo:
            memo[name] = 0  # recursion guard
            own, calls = comps.get(name, (0, []))
            memo[name] = own + sum(m * total(c) for c, m in calls)
        return memo[name]

    return total(entry)
