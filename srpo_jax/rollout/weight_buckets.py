"""The learner's weights as buckets of Hugging Face tensors, for the distributed weight sync.

The tensors are exactly what `hf_io.save_hf_params` writes (same names, layouts, order and
dtype), grouped in order into buckets of at most `bucket_bytes`; a tensor larger than that
gets a bucket of its own (the bucket grows to fit it rather than failing). Each bucket is
gathered when it is sent, so the host holds at most one bucket beyond the params.

A bucket travels either as one flat uint8 buffer (SGLang's load_format "flattened_bucket":
tensors back to back in `names` order, each at a byte offset that is a multiple of its
dtype's size, which holds trivially since every tensor has the servers' one dtype), or as
one broadcast per tensor.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np

from srpo_jax.model import hf_io

MIB = 2**20


@dataclasses.dataclass(frozen=True)
class Bucket:
    """Consecutive HF tensors sent together."""

    tensors: tuple[hf_io.HFTensor, ...]
    itemsize: int

    @property
    def nbytes(self) -> int:
        return sum(int(np.prod(t.shape)) * self.itemsize for t in self.tensors)

    def request_fields(self, dtype_name: str) -> dict[str, list]:
        """SGLang's UpdateWeightsFromDistributedReqInput names/dtypes/shapes."""
        return {
            "names": [t.name for t in self.tensors],
            "dtypes": [dtype_name] * len(self.tensors),
            "shapes": [list(t.shape) for t in self.tensors],
        }


def make_buckets(tensors: list[hf_io.HFTensor], itemsize: int, bucket_bytes: int) -> list[Bucket]:
    """Greedy in order: a bucket closes when the next tensor would pass `bucket_bytes`."""
    buckets, current, size = [], [], 0
    for t in tensors:
        n = int(np.prod(t.shape)) * itemsize
        if current and size + n > bucket_bytes:
            buckets.append(Bucket(tuple(current), itemsize))
            current, size = [], 0
        current.append(t)
        size += n
    if current:
        buckets.append(Bucket(tuple(current), itemsize))
    return buckets


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def host_to_torch(array: np.ndarray):
    """A torch view of a host array (no copy); bfloat16 goes through its uint16 bits, which
    torch.from_numpy cannot read as ml_dtypes' bfloat16."""
    import torch

    array = np.ascontiguousarray(array)
    if array.dtype.name == "bfloat16":
        array = array.view(np.uint16)
    with warnings.catch_warnings():  # a fetched jax array is read-only; the broadcast only reads
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        t = torch.from_numpy(array)
    return t.view(torch.bfloat16) if array.dtype == np.uint16 else t


def gather_bucket(params: Any, bucket: Bucket, dtype, *, flatten: bool, on_device: bool):
    """The bucket's tensors on this process, as torch tensors for the broadcast: one flat
    uint8 buffer (`flatten`) or a list in `names` order. Collective in a multi-process learner
    (every process calls it for every bucket, in order); the result only matters on process 0.

    `on_device` (a single-process GPU learner): each tensor stays on its GPU and reaches
    torch through DLPack, without a host copy."""
    import torch

    if on_device:
        import jax

        out = []
        for t in bucket.tensors:
            x = hf_io.hf_array(params, t, dtype, on_device=True)
            x = jax.device_put(x, jax.devices()[0])  # DLPack needs one device's buffer
            out.append(torch.from_dlpack(x))
        if flatten:
            return torch.cat([x.reshape(-1).view(torch.uint8) for x in out])
        return out
    if not flatten:
        return [host_to_torch(hf_io.hf_array(params, t, dtype)) for t in bucket.tensors]
    buf = np.empty(bucket.nbytes, np.uint8)
    offset = 0
    for t in bucket.tensors:  # written in place: one tensor at a time beyond the buffer
        a = np.ascontiguousarray(hf_io.hf_array(params, t, dtype)).reshape(-1).view(np.uint8)
        buf[offset : offset + a.size] = a
        offset += a.size
        del a
    return torch.from_numpy(buf)
