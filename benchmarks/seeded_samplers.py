"""Do the seeded (deterministic-mode) samplers of SGLang 0.5.23 and sglang-jax 0.1.0rc0
sample the softmax? A simulation in numpy of each one's noise, written from reading their
code (docs/rollout.md, "Exact resume"), against exact samples from the same distribution.

Both draw argmax(log p + g) with Gumbel noise g = -log(-log u), the Gumbel-max trick, exact
when the columns' u are independent uniforms. They differ in u:
- SGLang: MurmurHash3_x86_32 (hash seed 0) of the four 32-bit words (seed low, seed high,
  position, column), / (2^32 - 1), in float64, log u clamped to [float64 min, -2^-32].
- sglang-jax: ((seed*19349663 ^ pos*73856093)*805306457 ^ col*479001599) mod 2^24 / 2^24 in
  int32/float32, with 1e-9 added inside both logs and to p.
The MurmurHash3 here is checked against the algorithm's published test vectors first.

    python benchmarks/seeded_samplers.py [--draws 200000] [--vocab 512]

Prints the total variation from p of each sampler's draws, and of exact samples (the noise
floor at that many draws).
"""

from __future__ import annotations

import argparse

import numpy as np

_M32 = np.uint64(0xFFFFFFFF)


def _rotl(x, r: int):
    return ((x << np.uint64(r)) | (x >> np.uint64(32 - r))) & _M32


def murmur3_32(words: list, seed: int = 0):
    """MurmurHash3_x86_32 of little-endian 32-bit words (numpy uint64 arrays holding uint32)."""
    h = np.uint64(seed)
    for k in words:
        k = _rotl((k * np.uint64(0xCC9E2D51)) & _M32, 15)
        h = h ^ ((k * np.uint64(0x1B873593)) & _M32)
        h = (_rotl(h, 13) * np.uint64(5) + np.uint64(0xE6546B64)) & _M32
    h = h ^ np.uint64(4 * len(words))
    h = h ^ (h >> np.uint64(16))
    h = (h * np.uint64(0x85EBCA6B)) & _M32
    h = h ^ (h >> np.uint64(13))
    h = (h * np.uint64(0xC2B2AE35)) & _M32
    return h ^ (h >> np.uint64(16))


def check_murmur() -> None:
    """The published MurmurHash3_x86_32 vectors for one 4-byte block."""
    vectors = [(0x00000000, 0, 0x2362F9DE), (0x87654321, 0, 0xF55B516B),
               (0xFFFFFFFF, 0, 0x76293B50), (0x87654321, 0x5082EDEE, 0x2362F9DE)]  # fmt: skip
    for word, seed, want in vectors:
        got = int(murmur3_32([np.uint64(word)], seed))
        assert got == want, f"murmur3_32({word:#x}, seed {seed:#x}) = {got:#x}, want {want:#x}"


def sglang_draws(logp_V: np.ndarray, seeds_N: np.ndarray, pos: int) -> np.ndarray:
    s = seeds_N.astype(np.uint64)[:, None]
    col = np.arange(len(logp_V), dtype=np.uint64)[None, :]
    u_NV = murmur3_32([s & _M32, s >> np.uint64(32), np.full_like(s, pos), col])
    u_NV = u_NV.astype(np.float64) / float(_M32)
    with np.errstate(divide="ignore"):
        log_u = np.clip(np.log(u_NV), np.finfo(np.float64).min, -(2.0**-32))
    return np.argmax(logp_V[None] - np.log(-log_u), axis=1)


def sglang_jax_draws(p_V: np.ndarray, seeds_N: np.ndarray, pos: int) -> np.ndarray:
    s = seeds_N.astype(np.int32)
    col = np.arange(len(p_V), dtype=np.int32)[None, :]
    with np.errstate(over="ignore"):  # int32 wraps, as in the JAX original
        step = (s * np.int32(19349663)) ^ (np.int32(pos) * np.int32(73856093))
        h_NV = (step[:, None] * np.int32(805306457)) ^ (col * np.int32(479001599))
    u_NV = np.mod(h_NV, 2**24).astype(np.float32) / np.float32(2**24)
    g_NV = -np.log(-np.log(u_NV + np.float32(1e-9)) + np.float32(1e-9))
    return np.argmax(np.log(p_V + 1e-9).astype(np.float32)[None] + g_NV, axis=1)


def total_variation(tokens: np.ndarray, p_V: np.ndarray) -> float:
    return 0.5 * float(np.abs(np.bincount(tokens, minlength=len(p_V)) / len(tokens) - p_V).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=200_000)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--logit_std", type=float, default=2.0)
    args = parser.parse_args()
    check_murmur()
    rng = np.random.default_rng(0)
    logits_V = args.logit_std * rng.standard_normal(args.vocab)
    p_V = np.exp(logits_V - logits_V.max())
    p_V /= p_V.sum()
    seeds_N = rng.integers(0, 2**31, args.draws)
    chunks = np.array_split(seeds_N, max(1, args.draws * args.vocab // 2**22))
    draws = {
        "exact": rng.choice(args.vocab, size=args.draws, p=p_V),
        "sglang 0.5.23": np.concatenate([sglang_draws(np.log(p_V), c, 5) for c in chunks]),
        "sglang-jax 0.1.0rc0": np.concatenate([sglang_jax_draws(p_V, c, 5) for c in chunks]),
    }
    print(f"{args.draws} draws, vocab {args.vocab}, logits N(0, {args.logit_std}^2):")
    for name, tokens in draws.items():
        print(f"  {name:22s} total variation from p: {total_variation(tokens, p_V):.4f}")


if __name__ == "__main__":
    main()
