"""Per-sample, counter-based randomness (DESIGN §3).

Every random number drawn for sample *i* is a pure function of (seed, perturbation, severity,
sample_id_i) and a draw counter, computed with an integer hash in torch ops. Consequences:

* an image is perturbed identically whatever the batch size, batch order, worker or GPU count, so a
  failing sample can be replayed alone;
* CPU and CUDA produce bit-identical random numbers (the hash is exact integer arithmetic);
* there is no generator state to carry, seed or leak, and the global RNG is never touched.

The hash is Chris Wellons' "lowbias32" integer finaliser, evaluated on int64 tensors holding 32-bit
values. Products are split into 16-bit halves so no intermediate exceeds 2**63 (signed overflow is
undefined in the C++ kernels beneath torch). On the GPU those ~25 elementwise passes cost little; on
the CPU they are memory-bound on large fields and call-bound on small ones (a perturbation's keys and
per-sample parameters), so on the CPU every key, seed and field comes from fused numba loops computing
the same integers (tested to be bit-identical).
"""

from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF
_MASK31 = 0x7FFFFFFF
_C1 = 0x7FEB352D
_C2 = 0x846CA68B
_GOLDEN = 0x9E3779B9


def _mul32(x: Tensor, c: int) -> Tensor:
    """(x * c) mod 2**32 for x in [0, 2**32) without int64 overflow."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _MASK32


def hash32(x: Tensor) -> Tensor:
    """Bijective 32-bit integer hash of an int64 tensor holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, _C1)
    x = x ^ (x >> 15)
    x = _mul32(x, _C2)
    return x ^ (x >> 16)


def _name_code(name: str) -> int:
    return zlib.crc32(name.encode("utf-8")) & _MASK32


def sample_keys(seed: int, name: str, severity: int, sample_ids: Tensor) -> Tensor:
    """One 62-bit key per sample: int64 `[B]`, a function of (seed, name, severity, sample id) only."""
    ids = sample_ids.to(torch.int64)
    mixes = (_name_code(name), int(severity) & _MASK32, int(seed) & _MASK32, (int(seed) >> 32) & _MASK32)
    if _compiled(ids):
        from visionstress import _rng_kernels

        return torch.from_numpy(_rng_kernels.sample_key_rows(ids.contiguous().numpy(), np.array(mixes, np.uint32)))
    return _sample_keys_torch(ids, mixes)


def _sample_keys_torch(ids: Tensor, mixes: tuple[int, ...]) -> Tensor:
    """`sample_keys` in torch ops (any device): each of two 31-bit lanes hashes the id's halves, then the
    name code, severity and seed halves, one after the other."""
    id_lo = ids & _MASK32
    id_hi = (ids >> 32) & _MASK32
    lanes = []
    for lane in (0, 1):
        h = hash32(id_lo ^ ((_GOLDEN * (lane + 1)) & _MASK32))
        h = hash32(h ^ id_hi)
        for mix in mixes:
            h = hash32(h ^ mix)
        lanes.append(h & _MASK31)
    return (lanes[0] << 31) | lanes[1]


def stream_seed(keys: Tensor, counter: int) -> Tensor:
    """A 32-bit seed per sample for draw number `counter` of that sample's stream (int64 `[B]`)."""
    if _compiled(keys):
        return torch.from_numpy(_stream_seeds(keys, counter).astype(np.int64))
    return _stream_seed_torch(keys, counter)


def _stream_seed_torch(keys: Tensor, counter: int) -> Tensor:
    hi = (keys >> 31) & _MASK31
    lo = keys & _MASK31
    return hash32(hash32(hi ^ ((counter * _GOLDEN) & _MASK32)) ^ lo)


def _stream_seeds(keys: Tensor, counter: int) -> np.ndarray:
    """`stream_seed` of CPU keys by the compiled loop, as uint32."""
    from visionstress import _rng_kernels

    return _rng_kernels.stream_seeds(keys.contiguous().numpy(), (counter * _GOLDEN) & _MASK32)


def _bits(keys: Tensor, counter: int, n: int) -> Tensor:
    """32-bit hashes `[B, n]`: element j of row i depends only on (keys[i], counter, j)."""
    seeds = stream_seed(keys, counter)
    index = hash32(torch.arange(n, device=keys.device, dtype=torch.int64))
    return hash32(index.unsqueeze(0) ^ seeds.unsqueeze(1))


def _to_unit(bits: Tensor) -> Tensor:
    """Uniform float32 in (0, 1]: 24 bits centred in their bin, so 0 never occurs; the top bin's centre,
    1 - 2**-25, rounds to 1.0 in float32 (one draw in 2**24), which an inverse CDF must not be given."""
    return ((bits >> 8).to(torch.float32) + 0.5) * (1.0 / 16777216.0)


_BELOW_ONE = 1.0 - 2.0**-24
"""The largest float32 below 1: where the normal transform reads a uniform of 1.0 (see `_to_unit`), so
that a standard normal draw is finite (at most 5.29) instead of infinite (torch) or NaN (the fused loop)."""


@lru_cache(maxsize=1)
def numba_available() -> bool:
    """Whether the compiled CPU loops can be used (numba is a dependency, but may be absent)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def uniform_field(keys: Tensor, shape: tuple[int, ...], counter: int = 0) -> Tensor:
    """Per-sample uniform(0, 1) noise `[B, *shape]` (float32) derived from `keys` `[B]`."""
    n = 1
    for s in shape:
        n *= int(s)
    if _compiled(keys):
        return _fused(0, keys, counter, n).reshape(keys.shape[0], *shape)
    return _to_unit(_bits(keys, counter, n)).reshape(keys.shape[0], *shape)


def normal_field(keys: Tensor, shape: tuple[int, ...], counter: int = 0) -> Tensor:
    """Per-sample standard normal noise `[B, *shape]` (float32), by the inverse normal CDF; always finite
    (|z| <= 5.42: the extreme uniforms are 2**-25 and the largest float32 below 1)."""
    n = 1
    for s in shape:
        n *= int(s)
    if _compiled(keys):
        return _fused(1, keys, counter, n).reshape(keys.shape[0], *shape)
    return torch.special.ndtri(uniform_field(keys, shape, counter).clamp_(max=_BELOW_ONE))


def _compiled(keys: Tensor) -> bool:
    """Whether draws from `keys` use the compiled CPU loops: on the CPU whenever numba is there, whatever
    the size, so a sample replayed alone takes the same path as in its batch (the fused normals differ
    from torch's `ndtri` by up to 2e-6)."""
    return keys.device.type == "cpu" and numba_available()


def _fused(which: int, keys: Tensor, counter: int, n: int) -> Tensor:
    from visionstress import _rng_kernels

    seeds = _stream_seeds(keys, counter)
    rows = _rng_kernels.normal_rows if which else _rng_kernels.uniform_rows
    return torch.from_numpy(rows(seeds, n))


class SampleRNG:
    """Draws per-sample parameters: row i of every draw depends only on `keys[i]` and draw order.

    Each call advances a counter, so successive draws are independent streams; the same sequence
    of calls on the same keys gives the same numbers on any device.
    """

    def __init__(self, keys: Tensor) -> None:
        self.keys = keys
        self._counter = 0

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    @property
    def batch_size(self) -> int:
        return int(self.keys.shape[0])

    def uniform(self, low: float = 0.0, high: float = 1.0, shape: tuple[int, ...] = ()) -> Tensor:
        u = uniform_field(self.keys, shape, self._next())
        return low + (high - low) * u

    def normal(self, mean: float = 0.0, std: float = 1.0, shape: tuple[int, ...] = ()) -> Tensor:
        return mean + std * normal_field(self.keys, shape, self._next())

    def integers(self, low: int, high: int, shape: tuple[int, ...] = ()) -> Tensor:
        """Integers uniform in [low, high)."""
        u = uniform_field(self.keys, shape, self._next())
        return (low + torch.floor(u * (high - low))).to(torch.int64).clamp_(low, high - 1)

    def sign(self, shape: tuple[int, ...] = ()) -> Tensor:
        """+1 or -1 with equal probability, float32."""
        return torch.where(uniform_field(self.keys, shape, self._next()) < 0.5, -1.0, 1.0)

    def key(self) -> Tensor:
        """A fresh 62-bit sub-key per sample, for kernels that generate noise fields in `apply`."""
        counter = self._next()
        if _compiled(self.keys):
            from visionstress import _rng_kernels

            mix = (counter * _GOLDEN) & _MASK32
            return torch.from_numpy(_rng_kernels.sub_keys(self.keys.contiguous().numpy(), mix))
        hi = stream_seed(self.keys, counter) & _MASK31
        lo = hash32(stream_seed(self.keys, counter) ^ _GOLDEN) & _MASK31
        return (hi << 31) | lo
