"""Per-sample counter-based randomness: the property DESIGN §3 promises."""

from __future__ import annotations

import pytest
import torch

from visionstress.rng import SampleRNG, hash32, normal_field, sample_keys, uniform_field


def test_hash32_is_a_bijection_on_a_range_and_matches_known_values():
    x = torch.arange(1 << 16, dtype=torch.int64)
    h = hash32(x)
    assert h.unique().numel() == x.numel() and int(h.max()) < 2**32 and int(h.min()) >= 0
    # lowbias32(1) and lowbias32(0xDEADBEEF), computed with 32-bit unsigned arithmetic by hand-checked Python
    def reference(v: int) -> int:
        v ^= v >> 16
        v = (v * 0x7FEB352D) & 0xFFFFFFFF
        v ^= v >> 15
        v = (v * 0x846CA68B) & 0xFFFFFFFF
        return v ^ (v >> 16)
    for v in (1, 0xDEADBEEF, 0xFFFFFFFF, 12345):
        assert int(hash32(torch.tensor([v]))[0]) == reference(v)


def test_keys_depend_on_every_input_and_only_on_them():
    ids = torch.tensor([0, 1, 2, 2**40 + 5])
    base = sample_keys(0, "fog", 3, ids)
    assert base.unique().numel() == 4 and (base >= 0).all()
    assert torch.equal(base, sample_keys(0, "fog", 3, ids))
    for other in (sample_keys(1, "fog", 3, ids), sample_keys(0, "snow", 3, ids), sample_keys(0, "fog", 4, ids)):
        assert (other != base).all()
    assert torch.equal(sample_keys(0, "fog", 3, ids[2:3]), base[2:3])


def test_fields_are_per_sample_and_well_distributed():
    keys = sample_keys(0, "x", 1, torch.arange(64))
    u = uniform_field(keys, (3, 32, 32))
    assert u.shape == (64, 3, 32, 32) and u.min() > 0 and u.max() < 1
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.std()) - (1 / 12) ** 0.5) < 0.005
    assert torch.equal(uniform_field(keys[10:11], (3, 32, 32))[0], u[10])
    z = normal_field(keys, (4096,))
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    # neighbouring samples and neighbouring elements are uncorrelated
    flat = u.reshape(64, -1)
    assert abs(float(torch.corrcoef(flat[:2])[0, 1])) < 0.05
    assert abs(float(torch.corrcoef(torch.stack([flat[0, :-1], flat[0, 1:]]))[0, 1])) < 0.05
    assert not torch.equal(uniform_field(keys, (8,), counter=1), uniform_field(keys, (8,), counter=2))


def test_sample_rng_draws_are_independent_streams():
    rng = SampleRNG(sample_keys(0, "x", 1, torch.arange(1000)))
    a, b = rng.uniform(), rng.uniform()
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.1
    ints = rng.integers(3, 7, shape=(5,))
    assert ints.min() == 3 and ints.max() == 6 and ints.dtype == torch.int64
    assert set(rng.sign().tolist()) == {-1.0, 1.0}


@pytest.mark.cuda
def test_cuda_draws_equal_cpu_bit_for_bit():
    ids = torch.arange(16)
    cpu = uniform_field(sample_keys(5, "fog", 2, ids), (3, 8, 8))
    gpu = uniform_field(sample_keys(5, "fog", 2, ids.cuda()), (3, 8, 8))
    assert torch.equal(cpu, gpu.cpu())


def test_fused_cpu_path_is_bit_identical_to_the_torch_path():
    from visionstress import rng

    keys = sample_keys(3, "glass_blur", 5, torch.arange(5, 12))
    shape = (3, 61, 67)
    fused = uniform_field(keys, shape, counter=4)
    plain = rng._to_unit(rng._bits(keys, 4, 3 * 61 * 67)).reshape(7, *shape)
    assert torch.equal(fused, plain)


def test_fused_cpu_normals_match_ndtri():
    from visionstress import rng

    keys = sample_keys(3, "gaussian_noise", 2, torch.arange(4))
    fused = normal_field(keys, (3, 64, 64), counter=1)
    exact = torch.special.ndtri(rng._to_unit(rng._bits(keys, 1, 3 * 64 * 64))).reshape(4, 3, 64, 64)
    torch.testing.assert_close(fused, exact, atol=2e-6, rtol=2e-6)


def test_normals_are_finite_where_the_uniform_rounds_to_one():
    """The top 24-bit bin's centre rounds to 1.0 in float32 (one draw in 2**24); the inverse normal CDF
    gave +inf there (torch) or NaN (the fused loop): low_light's NaN pixel of issue 13, item 15."""
    from visionstress import rng

    keys = sample_keys(0, "top-bin", 1, torch.tensor([279]))  # found by search: draw 2816 of counter 1
    assert int(rng._bits(keys, 1, 4096)[0, 2816] >> 8) == 2**24 - 1
    assert float(uniform_field(keys, (4096,), counter=1)[0, 2816]) == 1.0
    small = torch.special.ndtri(rng._to_unit(rng._bits(keys, 1, 4096)).clamp_(max=rng._BELOW_ONE))  # the torch path
    fused = normal_field(keys.expand(8), (4096,), counter=1)  # the fused CPU loop
    assert rng._compiled(keys) or not rng.numba_available()
    for z in (small, fused):
        assert torch.isfinite(z).all()
        assert 5.2 < float(z[0, 2816]) < 5.4  # the largest float32 below 1, not 1
    torch.testing.assert_close(fused[0], small[0], atol=2e-6, rtol=2e-6)


@pytest.mark.skipif(not __import__("visionstress.rng", fromlist=["x"]).numba_available(), reason="needs numba")
def test_compiled_keys_and_seeds_equal_the_torch_ops_bit_for_bit():
    """On the CPU keys, stream seeds and sub-keys come from compiled loops; the torch ops (CUDA's path) are
    the definition. Ids past 2**32 and seeds past 2**32 or below 0 exercise both halves of each."""
    from visionstress import rng

    ids = torch.tensor([0, 1, 7, 2**31 - 1, 2**32 + 3, 2**40 + 5, 2**62 + 11])
    for seed, name, severity in ((0, "fog", 3), (2**33 + 9, "glass_blur", 5), (-4, "x", 0), (123, "", 2**31)):
        mixes = (rng._name_code(name), severity & rng._MASK32, seed & rng._MASK32, (seed >> 32) & rng._MASK32)
        keys = sample_keys(seed, name, severity, ids)
        assert torch.equal(keys, rng._sample_keys_torch(ids, mixes))
        for counter in (0, 1, 17, 2**20):
            assert torch.equal(rng.stream_seed(keys, counter), rng._stream_seed_torch(keys, counter))
        plain_key = (rng._stream_seed_torch(keys, 1) & rng._MASK31) << 31 | (
            rng.hash32(rng._stream_seed_torch(keys, 1) ^ rng._GOLDEN) & rng._MASK31)
        assert torch.equal(SampleRNG(keys).key(), plain_key)  # a fresh stream's first sub-key: counter 1
    assert sample_keys(0, "fog", 3, ids[:0]).shape == (0,)


def test_a_sample_replayed_alone_draws_what_it_drew_in_its_batch():
    """The normals of a batch and of one of its samples alone take the same path (they once switched from the
    fused loop to torch's ndtri below 32,768 draws, 2e-6 apart)."""
    keys = sample_keys(0, "gaussian_noise", 3, torch.arange(64))
    batch = normal_field(keys, (3, 32, 32), counter=2)
    alone = normal_field(keys[5:6], (3, 32, 32), counter=2)
    assert torch.equal(batch[5], alone[0])


@pytest.mark.skipif(not __import__("visionstress.rng", fromlist=["x"]).numba_available(), reason="needs numba")
def test_fused_normals_are_acklams_formula_exactly():
    """The fused loop evaluates the central formula for every draw, then the tails where they apply (twice as
    fast as one branchy pass); each draw must still be Acklam's value for its uniform, evaluated as written
    (float64 Python arithmetic, the C library's log), to the bit."""
    import math

    import numpy as np

    from visionstress import _rng_kernels as kernels

    a, b, c, d = kernels._ACKLAM_A, kernels._ACKLAM_B, kernels._ACKLAM_C, kernels._ACKLAM_D

    def acklam(p: float) -> float:
        p = min(p, kernels._BELOW_ONE_64)
        if p < 0.02425 or p > 0.97575:
            q = math.sqrt(-2.0 * math.log(p if p < 0.5 else 1.0 - p))
            x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
                (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0)
            return x if p < 0.5 else -x
        q = p - 0.5
        r = q * q
        return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / (
            ((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0)

    seeds = np.array([0, 1, 279, 2**32 - 1, 123456789, 42], dtype=np.uint32)
    uniforms = kernels.uniform_rows(seeds, 5000).astype(np.float64)
    normals = kernels.normal_rows(seeds, 5000)
    expected = np.array([[acklam(float(p)) for p in row] for row in uniforms], dtype=np.float32)
    assert np.array_equal(normals, expected)
    tails = (uniforms < 0.02425) | (uniforms > 0.97575)
    assert 0.03 < tails.mean() < 0.07  # both formulas were exercised
