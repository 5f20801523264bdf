"""Matmul FLOPs of a compiled HLO module, counted from its text.

The compilers' own `cost_analysis()` is no use for a training step: XLA:GPU's compile-only
client has none, and XLA:CPU's and XLA:TPU's count a while loop's body once, so a scanned
layer stack (and the micro-batch loop) is counted as one layer of one micro-batch.

A dot's FLOPs are 2 x (output elements) x (product of the lhs contracting dimensions). Dots
appear as `dot(...)` instructions (inside Triton GEMM fusions and elsewhere), as cuBLAS
custom calls (`__cublas$gemm`, `__cublas$lt$matmul`), whose contracting dimensions are in the
backend config, and, on TPU, as `convolution(...)`: 2 x (output elements per spatial
position) x (lhs features per group) x (window taps that meet input data, summed over the
spatial positions). XLA:TPU writes batched dots as convolutions whose windows mostly fall
on lhs-dilation holes or padding (a window of 4 over a size-1 dimension padded by 3 each
side meets the input once per output position), so the taps are counted, not assumed.
A computation's count is its own dots plus, for each instruction that calls
other computations, their counts, times the trip count for while-loop bodies: XLA:GPU and
XLA:CPU write `known_trip_count` on loops; XLA:TPU does not, so the bound is read from the
loop's condition (`i < N` against one integer constant; scans start at 0). A loop with
neither counts once, an undercount. Fused attention kernels (cuDNN, splash) are custom calls
whose FLOPs depend on the mask the call hides: they are not counted.
"""

from __future__ import annotations

import math
import re

import numpy as np

_COMP_RE = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_PARAM_RE = re.compile(r"([\w.\-]+):\s*(?:pred|[sfu]\d+|bf16|f8e\w+)\[([\d,]*)\]")
_CALLS_RE = re.compile(r"\b(calls|to_apply|body|condition)=%?([\w.\-]+)")
_BRANCHES_RE = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP_RE = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_LHS_CONTRACT_RE = re.compile(r"lhs_contracting_dims=\{([\d,]*)\}")
_CUBLAS_CONTRACT_RE = re.compile(r'"lhs_contracting_dimensions":\[([^\]]*)\]')
_GEMM_TARGETS = ('"__cublas$gemm"', '"__cublas$lt$matmul"')
_CONV_LABELS_RE = re.compile(r"dim_labels=(\w+)_(\w+)->(\w+)")
_FEATURE_GROUPS_RE = re.compile(r"feature_group_count=(\d+)")
_INT_CONSTANT_RE = re.compile(r"=\s*[su]\d+\[\]\S*\s+constant\((\d+)\)")
_DEF_RE = re.compile(
    r"^(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\(?\s*(?:pred|[sfu]\d+|bf16|f8e\w+)\[([\d,]*)\]"
)
_OPERAND_RE = re.compile(r"(?:dot|custom-call|convolution)\(\s*%?([\w.\-]+)")


def _dims(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _window_attr(line: str, key: str, n: int, default: int) -> list[int]:
    """One `window={...}` attribute per spatial dimension (`size=1x4`, `pad=0_0x3_3`)."""
    m = re.search(r"window=\{[^}]*\b" + key + r"=([\d_x]+)", line)
    return [int(x) if "_" not in x else x for x in m.group(1).split("x")] if m else [default] * n


def _real_taps(
    size_in: int,
    size_out: int,
    window: int,
    pad_lo: int,
    stride: int,
    lhs_dilate: int,
    rhs_dilate: int,
) -> int:
    """Window taps, summed over the output positions of one spatial dimension, that land on
    an input element (not on padding, nor on a hole of the lhs dilation)."""
    last = (size_in - 1) * lhs_dilate
    total = 0
    for tap in range(window):
        pos = np.arange(size_out) * stride + tap * rhs_dilate - pad_lo
        total += int(np.count_nonzero((pos >= 0) & (pos <= last) & (pos % lhs_dilate == 0)))
    return total


def _convolution_flops(line: str, lhs_dims: list[int], out_dims: list[int]) -> int | None:
    """2 x (output elements over the spatial positions) x (input features per group) x
    (real taps summed over the spatial positions, per dimension). XLA:TPU writes dots as
    convolutions whose windows slide over size-1 or dilated dimensions; only the taps that
    meet input data are multiply-adds."""
    labels = _CONV_LABELS_RE.search(line)
    if labels is None:
        return None
    lhs_l, out_l = labels.group(1), labels.group(3)
    spatial = sorted(c for c in lhs_l if c.isdigit())
    n = len(spatial)
    sizes, strides = _window_attr(line, "size", n, 1), _window_attr(line, "stride", n, 1)
    pads = [int(str(p).split("_")[0]) for p in _window_attr(line, "pad", n, "0_0")]
    lhs_dil, rhs_dil = (
        _window_attr(line, "lhs_dilate", n, 1),
        _window_attr(line, "rhs_dilate", n, 1),
    )
    groups = _FEATURE_GROUPS_RE.search(line)
    features = lhs_dims[lhs_l.index("f")] // int(groups.group(1) if groups else 1)
    outer, taps = math.prod(out_dims), 1
    for i, c in enumerate(spatial):
        size_out = out_dims[out_l.index(c)]
        outer //= size_out
        taps *= _real_taps(lhs_dims[lhs_l.index(c)], size_out, sizes[i], pads[i], strides[i],
                           lhs_dil[i], rhs_dil[i])  # fmt: skip
    return 2 * outer * features * taps


def _contracting(line: str, lhs_dims: list[int]) -> int | None:
    """Product of a dot's / cuBLAS GEMM's lhs contracting dimensions, or None."""
    if " dot(" in line:
        contract = _LHS_CONTRACT_RE.search(line)
    elif "custom-call(" in line and any(t in line for t in _GEMM_TARGETS):
        contract = _CUBLAS_CONTRACT_RE.search(line)
    else:
        return None
    if contract is None:
        return None
    return math.prod(lhs_dims[int(i.strip().strip('"'))] for i in contract.group(1).split(",") if i)


def _instruction_flops(line: str, shapes: dict[str, list[int]]) -> int:
    """FLOPs of one matmul instruction line (0 for anything else). Operands are printed by
    name, so their shapes come from `shapes` (every instruction's result)."""
    result, operand = _DEF_RE.match(line), _OPERAND_RE.search(line)
    if result is None or operand is None or operand.group(1) not in shapes:
        return 0
    lhs_dims, out_dims = shapes[operand.group(1)], _dims(result.group(2))
    if " convolution(" in line:
        return _convolution_flops(line, lhs_dims, out_dims) or 0
    k = _contracting(line, lhs_dims)
    return 0 if k is None else 2 * math.prod(out_dims) * k


def _parse(hlo_text: str):
    """-> (entry name, {computation: (own flops, [(callee, multiplier or condition name)])},
    {`i < N` computation: its integer constants})."""
    comps: dict[str, tuple[int, list[tuple[str, int | str]]]] = {}
    constants: dict[str, list[int]] = {}
    less_than: set[str] = set()  # computations that compare with direction=LT
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
                constants[current] = []
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
        constants[current] += [int(c) for c in _INT_CONSTANT_RE.findall(line)]
        if "direction=LT" in line:
            less_than.add(current)
        own += _instruction_flops(line, shapes)
        trip = _TRIP_RE.search(line)
        found = dict((kind, callee) for kind, callee in _CALLS_RE.findall(line))
        for kind, callee in found.items():
            if kind != "body":
                calls.append((callee, 1))
            elif trip:
                calls.append((callee, int(trip.group(1))))
            else:  # the bound is in the condition computation (XLA:TPU)
                calls.append((callee, found.get("condition", "")))
        for group in _BRANCHES_RE.findall(line):
            calls.extend((c.strip().lstrip("%"), 1) for c in group.split(",") if c.strip())
    return entry, comps, {c: v for c, v in constants.items() if c in less_than}


def _loop_bound(condition: str, comps, constants) -> int:
    """N of a condition `i < N` with one integer constant (and nothing called); else 1.
    `constants` holds only the computations that compare with direction=LT."""
    _, calls = comps.get(condition, (0, []))
    values = constants.get(condition, [])
    return values[0] if len(values) == 1 and not calls and values[0] > 0 else 1


def dot_flops(hlo_text: str) -> int:
    """Total matmul FLOPs of one execution of the module's entry computation."""
    entry, comps, constants = _parse(hlo_text)
    memo: dict[str, int] = {}

    def total(name: str) -> int:
        if name not in memo:
            memo[name] = 0  # recursion guard
            own, calls = comps.get(name, (0, []))
            memo[name] = own + sum(
                (m if isinstance(m, int) else _loop_bound(m, comps, constants)) * total(c)
                for c, m in calls
            )
        return memo[name]

    return total(entry)
