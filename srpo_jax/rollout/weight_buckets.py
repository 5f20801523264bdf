"""The learner's weights as buckets of Hugging Face tensors, for the distributed weight sync.

The tensors are exactly what `hf_io.save_hf_params` writes (same names, layouts, order and
dtype), grouped in order into buckets of at most `bucket_bytes`; a tensor larger than that
gets a bucket of its own (the bucket grows to fit it rather than failing). Each bucket is
gathered when it is sent, so the host holds at most one bucket beyond the params.

On a CPU learner each tensor takes one pass over its bytes, from the layer's numpy view of
our parameter (no copy). Where a cast is needed (fp32 params), the view goes through
`hf_io.hf_layout`, one jitted XLA computation (reshape, transpose, cast; the same function
save_hf_params and the GPU path use) whose output the host broadcasts: at Qwen3-0.6B that
halved the push's CPU seconds against torch's strided fp32-to-bf16 copy. Where only a
transpose is needed (bf16 params), torch copies the transposed view into one buffer the
size of the largest bucket (`_Ring`), allocated once per push and reused: at Qwen3-1.7B
XLA's pass gained no CPU seconds there and its per-tensor outputs cost 260 MiB more peak
memory (docs/performance.md). A tensor that needs neither (a bf16 embedding) is broadcast
from the parameter's own memory. A background thread gathers ahead of the broadcasts
(`Prefetch`, two payloads alive): per tensor, the next tensor while this one is broadcast;
flattened, each bucket is copied into the reused buffer, and the next bucket is gathered
only once this one's broadcast frees its place (two full buckets do not fit in one). So
the host holds one bucket (or two XLA outputs) beyond the params.

A bucket travels either as one flat uint8 buffer (SGLang's load_format "flattened_bucket":
tensors back to back in `names` order, each at a byte offset that is a multiple of its
dtype's size, which holds trivially since every tensor has the servers' one dtype), or as
one broadcast per tensor.
"""

from __future__ import annotations

import collections
import dataclasses
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterator
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


def _host_tensor(params: Any, tensor: hf_io.HFTensor, dtype):
    """(`tensor` as torch on this host, whether it is a strided view still to be copied).
    Copied, its bytes are exactly save_hf_params'. Where our parameter is one host buffer on
    this process, from the layer's numpy view of it (no copy): with a cast to make, that
    view goes through `hf_io.hf_layout` (XLA's output is the HF tensor, made in one fused
    pass); with only a transpose, the transposed view comes back for the caller to copy
    into its reused buffer (XLA's pass gained no CPU there, and a buffer per tensor cost
    memory: docs/performance.md); with neither, the view is the HF tensor (a bf16
    embedding: the parameter's own memory, which the broadcast only reads). Otherwise
    (sharded across devices or processes, or on an accelerator) hf_io.hf_array gathers it,
    collectively."""
    import jax

    array = hf_io.hf_source(params, tensor)
    if isinstance(array, jax.Array) and not (
        array.is_fully_addressable
        and len(array.addressable_shards) == 1
        and next(iter(array.devices())).platform == "cpu"
    ):
        return host_to_torch(hf_io.hf_array(params, tensor, dtype)), False
    x = np.asarray(array)  # a CPU jax array's numpy view shares its buffer
    x = x[tensor.layer] if tensor.layer is not None else x
    if x.dtype != np.dtype(dtype):
        return host_to_torch(np.asarray(hf_io.hf_layout(tensor.source, x, np.dtype(dtype)))), False
    view = host_to_torch(x).reshape(tensor.source.view_shape(x.shape))
    return (view.t(), True) if tensor.source.transpose else (view, False)


def _needs_buffer(params: Any, buckets: list[Bucket], dtype, flatten: bool) -> bool:
    """Whether any payload is copied into the reused buffer (see `_host_tensor`)."""
    return flatten or any(
        t.source.transpose and hf_io.hf_source(params, t).dtype == np.dtype(dtype)
        for b in buckets
        for t in b.tensors
    )


def _device_tensor(params: Any, tensor: hf_io.HFTensor, dtype):
    """One HF tensor computed on the GPU, as torch through DLPack (no host copy)."""
    import jax
    import torch

    x = hf_io.hf_array(params, tensor, dtype, on_device=True)
    return torch.from_dlpack(jax.device_put(x, jax.devices()[0]))  # one device's buffer


class _Ring:
    """One reused host buffer (the largest bucket) for a push's payloads: each goes after
    the one before it, or at the start when it does not fit before the end, and waits
    while that place still holds a payload not yet broadcast. Freed in order (`release`).
    Reused, not allocated per tensor: freed tensors would stay in the allocator's arenas,
    and the learner's memory would grow with every push."""

    def __init__(self, nbytes: int):
        import torch

        self.buffer = torch.empty(nbytes, dtype=torch.uint8)
        self._alive: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._head = 0

    def take(self, nbytes: int):
        """`nbytes` of the buffer (0 for a payload that needs none: it still takes its turn
        in `release`)."""
        with self._cond:
            start = self._head if self._head + nbytes <= self.buffer.numel() else 0
            end = start + nbytes
            self._cond.wait_for(lambda: not any(s < end and start < e for s, e in self._alive))
            self._alive.append((start, end))
            self._head = end
            return self.buffer[start:end]

    def release(self) -> None:
        """The oldest payload is broadcast: its place is free."""
        with self._cond:
            self._alive.popleft()
            self._cond.notify_all()


def _host_payloads(params: Any, buckets: list[Bucket], dtype, flatten: bool, ring: _Ring):
    tdtype = torch_dtype(np.dtype(dtype).name)
    for bucket in buckets:
        if flatten:
            flat, offset = ring.take(bucket.nbytes), 0
            for t in bucket.tensors:  # aligned: every tensor has the one dtype (module doc)
                n = int(np.prod(t.shape)) * bucket.itemsize
                src, _ = _host_tensor(params, t, dtype)
                flat[offset : offset + n].view(tdtype).view(t.shape).copy_(src)
                offset += n
                del src
            yield flat
            continue
        for t in bucket.tensors:
            src, strided = _host_tensor(params, t, dtype)
            if strided:  # copied into the reused buffer
                out = ring.take(int(np.prod(t.shape)) * bucket.itemsize)
                out = out.view(tdtype).view(t.shape)
                out.copy_(src)
                yield out
                del out
            else:  # its own array: only its turn in `release`
                ring.take(0)
                yield src
            del src


def payloads(params: Any, buckets: list[Bucket], dtype, *, flatten: bool, on_device: bool):
    """(every bucket's torch payloads in order, the call that frees the oldest one once it
    is broadcast). A payload is one flat uint8 buffer per bucket (`flatten`) or one tensor
    per HF tensor. Collective in a multi-process learner: every process must run it to the
    end, freeing each payload.

    `on_device` (a single-process GPU learner): tensors stay on the GPU and reach torch
    through DLPack, without a host copy."""
    import torch

    def device():
        for bucket in buckets:
            parts = [_device_tensor(params, t, dtype) for t in bucket.tensors]
            if flatten:
                yield torch.cat([x.reshape(-1).view(torch.uint8) for x in parts])
            else:
                yield from parts
            del parts

    if on_device:
        return device(), lambda: None
    needs = _needs_buffer(params, buckets, dtype, flatten)
    ring = _Ring(max((b.nbytes for b in buckets), default=0) if needs else 0)
    return _host_payloads(params, buckets, dtype, flatten, ring), ring.release


_END = object()


class Prefetch:
    """Runs a payload generator in a background thread, at most `slots` payloads alive
    (each one until `done`, which also calls `on_done`: the ring frees its place): the
    gathers overlap the broadcasts, since torch's broadcast and host copies release the
    GIL."""

    def __init__(self, produce: Iterator, slots: int, on_done: Callable[[], None]):
        self._on_done = on_done
        self._queue: queue.Queue = queue.Queue()
        self._slots = threading.Semaphore(slots - 1)  # the first one needs no slot
        self._stop = threading.Event()
        self.gather_s = 0.0  # time inside the generator (the benchmark's overlap figure)
        self._thread = threading.Thread(target=self._run, args=(iter(produce),), daemon=True)
        self._thread.start()

    def _run(self, produce: Iterator) -> None:
        try:
            while True:
                t0 = time.perf_counter()
                item = next(produce, _END)
                self.gather_s += time.perf_counter() - t0
                if item is _END:
                    break
                self._queue.put(item)
                del item
                self._slots.acquire()
                if self._stop.is_set():
                    return
        except BaseException as e:  # raised to the consumer by `get`
            self._queue.put(_Failed(e))
        self._queue.put(_END)

    def get(self):
        """The next payload (the producer's exception if it failed; StopIteration at the
        end). Call `done` once it is broadcast."""
        item = self._queue.get()
        if isinstance(item, _Failed):
            raise item.error
        if item is _END:
            raise StopIteration
        return item

    def done(self) -> None:
        self._on_done()
        self._slots.release()

    def drain(self) -> None:
        """Takes and drops every payload left, to the end (a failed gather included)."""
        while (item := self._queue.get()) is not _END:
            if not isinstance(item, _Failed):
                self.done()
            del item

    def stop(self) -> None:
        """Stops after the payload being gathered (single process only: in a multi-process
        learner the gathers are collective: `drain` instead)."""
        self._stop.set()
        self._slots.release()


@dataclasses.dataclass(frozen=True)
class _Failed:
    error: BaseException
