"""ECG augmentations (datasets/augment.py): the math of REFERENCE.md section 3, per sample and batched.

Statistical checks use fixed seeds, so they are deterministic; their thresholds are generous
(several standard errors) so that a correct implementation passes whatever the seed.
"""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from datasets.augment import (
    JITTER_AMPLITUDE,
    BatchECGTransform,
    ECGTransform,
    build_ecg_transforms,
    crop,
    ft_surrogate,
    jitter,
    random_crop,
    random_crop_start,
    rescale,
    sign_flip,
    time_flip,
)
from util.config import ConfigError

# every op off: a transform with only the ops a test switches on
OFF = dict(ft_surr_phase_noise=0.0, ft_surr_p=0.0, jitter_sigma=0.0, rescaling_sigma=0.0,
           time_flip_p=0.0, sign_flip_p=0.0)


@pytest.fixture(autouse=True)
def one_thread():
    """Run single-threaded like a DataLoader worker: many small FFTs on 2 busy cores are otherwise
    dominated by thread hand-offs (seconds instead of milliseconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def ecg_like(leads=12, length=500, seed=0, dtype=torch.float32):
    """(leads, length) smooth random signal plus an offset, bounded away from zero in |rfft|."""
    g = gen(seed)
    t = torch.arange(length, dtype=torch.float64) / length
    x = torch.randn(leads, length, generator=g, dtype=torch.float64)
    x = x + torch.sin(2 * math.pi * 5 * t) + 0.5
    return x.to(dtype)


# --------------------------------------------------------------------------------------------
# FT surrogate
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [2500, 2501, 64, 65])
def test_ft_surrogate_keeps_every_amplitude_spectrum_and_is_real(length):
    x = ecg_like(length=length, seed=1)
    y = ft_surrogate(x, 0.5, gen(0))
    assert y.shape == x.shape and y.dtype == torch.float32 and not y.is_complex()
    assert not torch.equal(y, x)
    amp_x = torch.fft.rfft(x.double()).abs()
    amp_y = torch.fft.rfft(y.double()).abs()
    # float32 FFTs: relative 1e-4 of each lead's spectrum scale
    torch.testing.assert_close(amp_y, amp_x, rtol=1e-4, atol=1e-4 * float(amp_x.max()))
    # float64 input is computed in float64: relative 1e-4 bin by bin
    x64 = x.double()
    y64 = ft_surrogate(x64, 0.5, gen(0))
    assert y64.dtype == torch.float64
    rel = (torch.fft.rfft(y64).abs() - torch.fft.rfft(x64).abs()).abs() / torch.fft.rfft(x64).abs()
    assert float(rel.max()) < 1e-4


@pytest.mark.parametrize("length", [200, 201])
def test_ft_surrogate_phase_is_hermitian_shared_and_in_range(length):
    """Recover the rotation R_k = Y_k / X_k of the FULL fft: Hermitian, unit modulus, one for all leads."""
    magnitude = 0.25
    x = ecg_like(length=length, seed=2, dtype=torch.float64)
    y = ft_surrogate(x, magnitude, gen(3))
    rotation = torch.fft.fft(y) / torch.fft.fft(x)  # (leads, T) complex
    torch.testing.assert_close(rotation.abs(), torch.ones_like(rotation.abs()), rtol=0, atol=1e-8)
    # same phases for every lead
    torch.testing.assert_close(rotation, rotation[:1].expand_as(rotation), rtol=0, atol=1e-8)
    r = rotation[0]
    # phi_0 = 0, phi_{T/2} = 0 for even T, phi_{T-k} = -phi_k
    assert abs(complex(r[0]) - 1) < 1e-8
    if length % 2 == 0:
        assert abs(complex(r[length // 2]) - 1) < 1e-8
    k = torch.arange(1, (length - 1) // 2 + 1)
    torch.testing.assert_close(r[length - k], r[k].conj(), rtol=0, atol=1e-8)
    # magnitude * phi_k in [0, 2 pi magnitude), uniform: mean pi * magnitude
    angle = torch.remainder(torch.angle(r[k]), 2 * math.pi)
    assert float(angle.max()) < 2 * math.pi * magnitude + 1e-8
    assert abs(float(angle.mean()) - math.pi * magnitude) < 0.1
    # the same as the reference definition with that explicit Hermitian phase array
    phase = torch.zeros(length, dtype=torch.float64)
    phase[k] = angle
    phase[length - k] = -angle
    expected = torch.fft.ifft(torch.fft.fft(x) * torch.exp(1j * phase)).real
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-9)


def test_ft_surrogate_keeps_cross_lead_phase_differences():
    x = ecg_like(leads=3, length=300, seed=4)
    y = ft_surrogate(x, 1.0, gen(5))
    fx, fy = torch.fft.rfft(x.double()), torch.fft.rfft(y.double())
    cross_x = fx[0] * fx[1:].conj()  # (2, F)
    cross_y = fy[0] * fy[1:].conj()
    torch.testing.assert_close(cross_y, cross_x, rtol=1e-4, atol=1e-4 * float(cross_x.abs().max()))


def test_ft_surrogate_magnitude_zero_is_identity():
    x = ecg_like(length=100)
    g = gen(0)
    state = g.get_state()
    assert torch.equal(ft_surrogate(x, 0.0, g), x)
    assert torch.equal(g.get_state(), state)


@pytest.mark.parametrize("length", [127, 128])
def test_ecg_transform_ft_only_keeps_amplitudes_for_odd_and_even_length(length):
    x = ecg_like(length=length, seed=18)
    y = ECGTransform(**{**OFF, "ft_surr_phase_noise": 0.5, "ft_surr_p": 1.0})(x, gen(19))
    fx, fy = torch.fft.fft(x.double()), torch.fft.fft(y.double())
    torch.testing.assert_close(fy.abs(), fx.abs(), rtol=1e-4, atol=1e-4 * float(fx.abs().max()))
    rotation = fy[0] / fx[0]
    k = torch.arange(1, (length - 1) // 2 + 1)
    torch.testing.assert_close(rotation[length - k], rotation[k].conj(), rtol=0, atol=1e-4)
    assert not torch.equal(y, x)
    y16 = ECGTransform(**FULL)(x.half(), gen(19))
    assert y16.dtype == torch.float16 and y16.shape == x.shape


def test_ft_surrogate_half_input_keeps_dtype():
    x = ecg_like(length=128).half()
    y = ft_surrogate(x, 0.3, gen(0))
    assert y.dtype == torch.float16 and y.shape == x.shape


# --------------------------------------------------------------------------------------------
# Jitter, rescaling, flips
# --------------------------------------------------------------------------------------------

def assert_normal(sample, std, name):
    """sample ~ N(0, std^2): mean, std and a KS test, with wide margins."""
    sample = np.asarray(sample, dtype=np.float64).ravel()
    n = sample.size
    assert abs(sample.mean()) < 5 * std / math.sqrt(n), name
    assert abs(sample.std() / std - 1) < 5 / math.sqrt(2 * n), name
    assert stats.kstest(sample / std, "norm").pvalue > 1e-4, name


@pytest.mark.parametrize("sigma", [0.25, 0.05])
def test_jitter_residual_matches_the_definition(sigma):
    x = ecg_like(leads=4, length=2000, seed=6).double()
    x = x + torch.sign(x) * 0.1  # |x| >= 0.1: the multiplicative residual is well defined
    y = jitter(x, sigma, gen(7), mode="multiplicative")
    assert y.dtype == x.dtype and y.shape == x.shape
    assert_normal((y - x) / (JITTER_AMPLITUDE * x), sigma, "multiplicative: (x' - x) / (0.6 x)")
    y = jitter(x, sigma, gen(8), mode="additive")
    assert_normal(y - x, sigma, "additive: x' - x")
    assert jitter(x, 0.0, gen(0)).equal(x)
    with pytest.raises(ValueError, match="jitter mode"):
        jitter(x, sigma, gen(0), mode="gaussian")


@pytest.mark.parametrize("mode", ["multiplicative", "additive"])
def test_ecg_transform_jitter_only_matches_the_definition(mode):
    sigma = 0.25
    x = ecg_like(leads=12, length=500, seed=9)
    x = x + torch.sign(x) * 0.1
    transform = ECGTransform(**{**OFF, "jitter_sigma": sigma, "jitter_mode": mode})
    g = gen(10)
    y = torch.stack([transform(x, g) for _ in range(10)]).double()
    residual = y - x.double()
    if mode == "multiplicative":
        residual = residual / (JITTER_AMPLITUDE * x.double())
    assert_normal(residual, sigma, mode)


def test_rescale_one_factor_per_sample_with_mean_one_and_std_sigma():
    sigma = 0.5
    x = ecg_like(leads=12, length=50, seed=11)
    g = gen(12)
    factors = []
    for _ in range(4000):
        y = rescale(x, sigma, g)
        ratio = y / x
        torch.testing.assert_close(ratio, ratio[:1, :1].expand_as(ratio))  # all leads, all times
        factors.append(float(ratio[0, 0]))
    assert_normal(np.array(factors) - 1.0, sigma, "rescale factor - 1")
    assert rescale(x, 0.0, g).equal(x)


def test_ecg_transform_rescaling_only():
    sigma = 0.5
    x = ecg_like(leads=12, length=50, seed=13)
    transform = ECGTransform(**{**OFF, "rescaling_sigma": sigma})
    g = gen(14)
    factors = []
    for _ in range(4000):
        ratio = transform(x, g) / x
        torch.testing.assert_close(ratio, ratio[:1, :1].expand_as(ratio))
        factors.append(float(ratio[0, 0]))
    assert_normal(np.array(factors) - 1.0, sigma, "ECGTransform rescale factor - 1")


def test_flips_and_their_probabilities():
    x = ecg_like(leads=2, length=10)
    assert torch.equal(time_flip(x), x.flip(-1))
    assert torch.equal(sign_flip(x), -x)
    transform = ECGTransform(**{**OFF, "time_flip_p": 0.3})
    g = gen(15)
    flipped = sum(torch.equal(transform(x, g), x.flip(-1)) for _ in range(2000))
    assert abs(flipped / 2000 - 0.3) < 0.05
    transform = ECGTransform(**{**OFF, "sign_flip_p": 0.7})
    negated = sum(torch.equal(transform(x, g), -x) for _ in range(2000))
    assert abs(negated / 2000 - 0.7) < 0.05


def test_ft_probability():
    x = ecg_like(leads=2, length=64)
    transform = ECGTransform(**{**OFF, "ft_surr_phase_noise": 0.5, "ft_surr_p": 0.5})
    g = gen(16)
    changed = sum(not torch.equal(transform(x, g), x) for _ in range(2000))
    assert abs(changed / 2000 - 0.5) < 0.05


# --------------------------------------------------------------------------------------------
# Crops
# --------------------------------------------------------------------------------------------

def test_crops_stay_in_bounds_cover_the_range_and_eval_starts_at_zero():
    x = torch.arange(10.0).expand(3, 10)  # (leads, T): value == time index
    g = gen(17)
    starts = set()
    for _ in range(400):
        c = random_crop(x, 7, g)
        assert c.shape == (3, 7)
        start = int(c[0, 0])
        assert torch.equal(c, x[:, start:start + 7])
        starts.add(start)
    assert starts == {0, 1, 2, 3}
    assert torch.equal(crop(x, 7), x[:, :7])
    assert torch.equal(crop(x, 4, start=6), x[:, 6:])
    assert {random_crop_start(10, 7, g) for _ in range(400)} == {0, 1, 2, 3}
    assert random_crop_start(7, 7, g) == 0
    with pytest.raises(ValueError, match="cannot crop"):
        random_crop(x, 11, g)
    with pytest.raises(ValueError, match="outside"):
        crop(x, 7, start=4)


# --------------------------------------------------------------------------------------------
# ECGTransform: seeds, no draws when off, input untouched
# --------------------------------------------------------------------------------------------

FULL = dict(ft_surr_phase_noise=0.1, ft_surr_p=0.5, jitter_sigma=0.25, rescaling_sigma=0.5,
            time_flip_p=0.5, sign_flip_p=0.5)


def test_same_seed_same_output_different_seed_different_output():
    x = ecg_like(length=256)
    transform = ECGTransform(**{**FULL, "ft_surr_p": 1.0})
    assert torch.equal(transform(x, gen(1)), transform(x, gen(1)))
    assert not torch.equal(transform(x, gen(1)), transform(x, gen(2)))
    batch = x.expand(8, 1, 12, 256)
    batched = BatchECGTransform(**FULL)
    assert torch.equal(batched(batch, gen(1)), batched(batch, gen(1)))
    assert not torch.equal(batched(batch, gen(1)), batched(batch, gen(2)))


def test_disabled_ops_draw_nothing_and_input_is_untouched():
    x = ecg_like(length=100)
    x_copy = x.clone()
    g = gen(0)
    state = g.get_state()
    assert torch.equal(ECGTransform(**OFF)(x, g), x)
    assert torch.equal(g.get_state(), state)
    for p in (1.0, 0.5):
        ECGTransform(**{**FULL, "ft_surr_p": p})(x, g)
    assert torch.equal(x, x_copy)
    batch = x.expand(4, 12, 100).clone()
    batch_copy = batch.clone()
    assert torch.equal(BatchECGTransform(**OFF)(batch, g), batch)
    BatchECGTransform(**{**FULL, "ft_surr_p": 0.5})(batch, g)
    assert torch.equal(batch, batch_copy)


def test_ecg_transform_default_is_the_paper_pipeline():
    transform = ECGTransform()
    assert (transform.ft_surr_phase_noise, transform.ft_surr_p, transform.jitter_sigma,
            transform.jitter_mode, transform.rescaling_sigma) == (0.1, 0.5, 0.25, "multiplicative", 0.5)
    assert (transform.time_flip_p, transform.sign_flip_p) == (0.0, 0.0)


# --------------------------------------------------------------------------------------------
# BatchECGTransform: shapes, dtypes, independence, same distribution as per sample
# --------------------------------------------------------------------------------------------

def test_batch_transform_shapes_dtypes_and_no_grad():
    x = ecg_like(length=128)
    transform = BatchECGTransform(**FULL)
    for batch in (x.expand(5, 1, 12, 128), x.expand(5, 12, 128)):
        for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            with torch.no_grad():
                y = transform(batch.to(dtype), gen(0))
            assert y.shape == batch.shape and y.dtype == dtype
            assert torch.isfinite(y.float()).all()
    with pytest.raises(ValueError, match="expected a batch"):
        transform(x)
    with pytest.raises(ValueError, match="expected a batch"):
        transform(x.expand(5, 2, 12, 128))


def test_batch_samples_draw_independently():
    x = ecg_like(leads=12, length=64)
    batch = x.expand(256, 1, 12, 64)
    # rescaling: one factor per sample, all different, mean 1 std sigma
    y = BatchECGTransform(**{**OFF, "rescaling_sigma": 0.5})(batch, gen(1))
    ratio = (y / batch)[:, 0]  # (B, 12, 64)
    torch.testing.assert_close(ratio, ratio[:, :1, :1].expand_as(ratio))
    factors = ratio[:, 0, 0].double().numpy()
    assert len(np.unique(factors)) == 256
    assert_normal(factors - 1.0, 0.5, "batched rescale factor - 1")
    # FT surrogate: each sample its own phases, shared by its leads, amplitude kept
    y = BatchECGTransform(**{**OFF, "ft_surr_phase_noise": 0.5, "ft_surr_p": 1.0})(batch, gen(2))[:, 0]
    fx, fy = torch.fft.rfft(x.double()), torch.fft.rfft(y.double())  # (12, F), (B, 12, F)
    torch.testing.assert_close(fy.abs(), fx.abs().expand_as(fy), rtol=1e-4, atol=1e-4 * float(fx.abs().max()))
    rotation = fy / fx  # (B, 12, F)
    torch.testing.assert_close(rotation, rotation[:, :1].expand_as(rotation), rtol=0, atol=1e-4)
    phases = torch.angle(rotation[:, 0, 1:10])  # (B, 9)
    assert len(torch.unique(phases[:, 0])) == 256
    # with p = 0.5 a skipped sample is returned exactly
    y = BatchECGTransform(**{**OFF, "ft_surr_phase_noise": 0.5, "ft_surr_p": 0.5})(batch, gen(3))
    unchanged = (y == batch).flatten(1).all(1)
    assert 0.35 < float(unchanged.double().mean()) < 0.65


def summaries(y, x):
    """Per-sample statistics sensitive to every op: (N, leads, T) -> dict of (N,) arrays."""
    y = y.double()
    x = x.double()
    yc = y[:, 0] - y[:, 0].mean(-1, keepdim=True)
    xc = x[0] - x[0].mean()
    corr_input = (yc * xc).sum(-1) / (yc.norm(dim=-1) * xc.norm())  # FT, flips
    y1 = y[:, 1] - y[:, 1].mean(-1, keepdim=True)
    corr_leads = (yc * y1).sum(-1) / (yc.norm(dim=-1) * y1.norm(dim=-1))  # shared vs independent phases
    return {
        "element": y[:, 0, 37].numpy(),
        "mean": y[:, 0].mean(-1).numpy(),
        "std": y[:, 3].std(-1).numpy(),  # rescaling, jitter
        "corr_input": corr_input.numpy(),
        "corr_leads": corr_leads.numpy(),
        "phase_bin_3": torch.angle(torch.fft.rfft(y[:, 0])[:, 3]).numpy(),
    }


@pytest.mark.parametrize("mode", ["multiplicative", "additive"])
def test_batched_and_per_sample_outputs_have_the_same_distribution(mode):
    params = {**FULL, "ft_surr_phase_noise": 0.3, "sign_flip_p": 0.3, "jitter_mode": mode}
    x = ecg_like(leads=12, length=128, seed=20)
    n = 3000
    per_sample = ECGTransform(**params)
    g = gen(21)
    a = torch.stack([per_sample(x, g) for _ in range(n)])  # (n, 12, 128)
    b = BatchECGTransform(**params)(x.expand(n, 1, 12, 128), gen(22))[:, 0]
    sa, sb = summaries(a, x), summaries(b, x)
    for name in sa:
        pvalue = stats.ks_2samp(sa[name], sb[name]).pvalue
        assert pvalue > 1e-4, f"{name}: KS p = {pvalue:.2g}"
    # and the KS test does see a different pipeline
    other = BatchECGTransform(**{**params, "ft_surr_p": 0.0})(x.expand(n, 1, 12, 128), gen(23))[:, 0]
    assert stats.ks_2samp(sa["corr_input"], summaries(other, x)["corr_input"]).pvalue < 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batch_transform_on_cuda_matches_cpu_in_distribution():
    params = {**FULL, "ft_surr_phase_noise": 0.3, "sign_flip_p": 0.3}
    x = ecg_like(leads=12, length=128, seed=30)
    n = 3000
    transform = BatchECGTransform(**params)
    cpu = transform(x.expand(n, 1, 12, 128), gen(31))[:, 0]
    g = torch.Generator(device="cuda").manual_seed(32)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        batch = x.expand(n, 1, 12, 128).to("cuda", dtype)
        with torch.no_grad():
            y = transform(batch, g)
        assert y.dtype == dtype and y.device == batch.device
        if dtype == torch.float32:
            sa, sb = summaries(cpu, x), summaries(y[:, 0].cpu(), x)
            for name in sa:
                assert stats.ks_2samp(sa[name], sb[name]).pvalue > 1e-4, name
    with pytest.raises(ValueError, match="generator"):
        transform(x.expand(2, 12, 128).cuda(), gen(0))


# --------------------------------------------------------------------------------------------
# build_ecg_transforms
# --------------------------------------------------------------------------------------------

# configs/data/ecg.yaml's values
ECG_AUGMENT = {"augment": True, "augment_device": "cpu", "ft_surr_phase_noise": 0.1, "ft_surr_p": 0.5,
               "jitter_sigma": 0.25, "jitter_mode": "multiplicative", "rescaling_sigma": 0.5, "time_flip_p": 0.0,
               "sign_flip_p": 0.0}


def test_build_ecg_transforms():
    assert build_ecg_transforms({**ECG_AUGMENT, "augment": False}) == (None, None)
    with pytest.raises(KeyError, match="jitter_sigma"):  # no code defaults: the config must give every key
        build_ecg_transforms({k: v for k, v in ECG_AUGMENT.items() if k != "jitter_sigma"})
    cfg = {**ECG_AUGMENT, "ft_surr_phase_noise": 0.075, "jitter_sigma": 0.2, "jitter_mode": "additive",
           "time_flip_p": 0.1, "sign_flip_p": 0.2, "batch_size": 32}
    cpu, batched = build_ecg_transforms(cfg)
    assert batched is None and isinstance(cpu, ECGTransform)
    assert (cpu.ft_surr_phase_noise, cpu.ft_surr_p, cpu.jitter_sigma, cpu.jitter_mode, cpu.rescaling_sigma,
            cpu.time_flip_p, cpu.sign_flip_p) == (0.075, 0.5, 0.2, "additive", 0.5, 0.1, 0.2)
    cpu, batched = build_ecg_transforms({**cfg, "augment_device": "device", "ft_surr_p": 1.0})
    assert cpu is None and isinstance(batched, BatchECGTransform) and batched.ft_surr_p == 1.0


@pytest.mark.parametrize("bad, match", [
    ({"augment_device": "gpu"}, "augment_device"),
    ({"jitter_sigma": -0.1}, "jitter_sigma"),
    ({"rescaling_sigma": -1}, "rescaling_sigma"),
    ({"ft_surr_phase_noise": -0.1}, "ft_surr_phase_noise"),
    ({"ft_surr_phase_noise": 1.5}, "ft_surr_phase_noise"),
    ({"ft_surr_p": 1.2}, "ft_surr_p"),
    ({"time_flip_p": -0.5}, "time_flip_p"),
    ({"sign_flip_p": "often"}, "sign_flip_p"),
    ({"jitter_mode": "gaussian"}, "jitter_mode"),
    ({"augment": "yes"}, "augment"),
    ({"jitter_sigma": float("nan")}, "jitter_sigma"),
])
def test_build_ecg_transforms_refuses_bad_values(bad, match):
    with pytest.raises(ConfigError, match=match):
        build_ecg_transforms({**ECG_AUGMENT, "augment": True, **bad})
    if "augment" not in bad:  # refused even when augmentation is off
        with pytest.raises(ConfigError, match=match):
            build_ecg_transforms({**ECG_AUGMENT, "augment": False, **bad})


def test_constructors_refuse_bad_values():
    with pytest.raises(ValueError, match="jitter_sigma"):
        ECGTransform(jitter_sigma=-1)
    with pytest.raises(ValueError, match="ft_surr_p"):
        BatchECGTransform(ft_surr_p=2)


def test_batched_ft_surrogate_on_a_cpu_batch_where_no_sample_is_drawn_returns_it_unchanged():
    """A small batch with ft_surr_p < 1 can draw no sample at all; the CPU path then transforms an empty
    selection, which MKL's FFT refuses ("Inconsistent configuration parameters")."""
    transform = BatchECGTransform(**FULL)
    x = torch.randn(2, 12, 500)
    out = transform._ft_surrogate(x, torch.zeros(2, dtype=torch.bool), torch.Generator().manual_seed(0))
    assert torch.equal(out, x)
