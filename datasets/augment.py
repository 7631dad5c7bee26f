"""ECG augmentations: crop, FT surrogate, jitter, rescaling, time/sign flip.

The math follows the reference signal MAE (``../shared/REFERENCE.md`` section 3); the code is
written for speed: a DataLoader worker runs single-threaded, so every op here is a handful of
vectorised torch calls with no Python loop over leads or samples.

Two ways to augment, same distribution:
  ``ECGTransform``       per sample on the CPU, called by the dataset AFTER it cropped:
                         ``(leads, T) -> (leads, T)``.
  ``BatchECGTransform``  an ``nn.Module`` for a whole batch on the training device:
                         ``(B, 1, leads, T)`` or ``(B, leads, T)`` -> same shape; every sample
                         draws its own phases, noise, factors and coin flips.

Randomness: every op takes a ``torch.Generator`` (``None`` = torch's default generator of the
tensor's device). Draws are made on ``x.device``, so a generator must live on that device
(``ECGTransform`` and ``random_crop_start`` are CPU-side: a CPU generator).

Functional ops (each returns a new tensor unless it says otherwise; inputs are never modified)::

    random_crop_start(length, time_steps, generator=None) -> int
    random_crop(x, time_steps, generator=None) -> x[..., start:start + time_steps]   (a view)
    crop(x, time_steps, start=0) -> x[..., start:start + time_steps]                 (a view)
    ft_surrogate(x, magnitude, generator=None)
    jitter(x, sigma, generator=None, mode="multiplicative")
    rescale(x, sigma, generator=None)
    time_flip(x), sign_flip(x)
    ECGTransform(...), BatchECGTransform(...)
    build_ecg_transforms(data_cfg) -> (cpu_transform or None, batch_transform or None)

Reference pipeline for MAE pretraining: Crop -> FTSurrogate (p 0.5) -> Jitter -> Rescaling.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Tuple

import torch
from torch import nn

from util.errors import ConfigError
from util.schema import Bool, Choice, Float, validate_args

__all__ = [
    "JITTER_AMPLITUDE",
    "JITTER_MODES",
    "BatchECGTransform",
    "ECGTransform",
    "build_ecg_transforms",
    "crop",
    "ft_surrogate",
    "jitter",
    "random_crop",
    "random_crop_start",
    "rescale",
    "sign_flip",
    "time_flip",
]

# The reference's multiplicative jitter: x + JITTER_AMPLITUDE * x * N(0, sigma^2).
JITTER_AMPLITUDE = 0.6
JITTER_MODES = ("multiplicative", "additive")
AUGMENT_DEVICES = ("auto", "cpu", "device")


def resolve_augment_device(value: str) -> str:
    """``auto``: batched on the training device when it is a GPU (CPU workers cannot keep one busy);
    per sample on a CPU, where each sample's randomness is keyed by the sample (the same on any
    number of ranks) and the cost is about 5% of a step (bench/pretrain_pipeline.py)."""
    if value == "auto":
        import torch

        return "device" if torch.cuda.is_available() else "cpu"
    return value


# --------------------------------------------------------------------------------------------
# Functional ops
# --------------------------------------------------------------------------------------------

def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for half/bfloat16/integer input, float64 stays float64."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _coin(p: float, generator: Optional[torch.Generator], device: torch.device) -> bool:
    """One Bernoulli(p) draw; p <= 0 and p >= 1 draw nothing."""
    if p <= 0.0:
        return False
    if p >= 1.0:
        return True
    return torch.rand((), generator=generator, device=device).item() < p


def random_crop_start(length: int, time_steps: int, generator: Optional[torch.Generator] = None) -> int:
    """Start of a training crop: uniform in ``[0, length - time_steps]`` (both ends included).

    Draws on the CPU generator. Useful to slice a memory-mapped record before reading it.
    """
    if time_steps > length:
        raise ValueError(f"cannot crop {time_steps} time steps from a signal of length {length}")
    return int(torch.randint(length - time_steps + 1, (1,), generator=generator).item())


def crop(x: torch.Tensor, time_steps: int, start: int = 0) -> torch.Tensor:
    """x: (..., T) -> (..., time_steps), a view ``x[..., start:start + time_steps]`` (eval: start 0)."""
    length = x.shape[-1]
    if start < 0 or start + time_steps > length:
        raise ValueError(f"crop [{start}, {start + time_steps}) is outside a signal of length {length}")
    return x[..., start:start + time_steps]


def random_crop(x: torch.Tensor, time_steps: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """x: (..., T) -> (..., time_steps), a view at a uniform start in ``[0, T - time_steps]``."""
    return crop(x, time_steps, random_crop_start(x.shape[-1], time_steps, generator))


_ONES: dict = {}  # (rows, bins, device, dtype) -> ones: the unit moduli of the phase rotations


def _random_rotations(n_rows: int, n_bins: int, magnitude: float, generator, device,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n_rows, n_bins) complex ``exp(i * magnitude * phi)``, ``phi = 2 pi U[0, 1)``.

    complex64 for ``dtype=float32``, complex128 for ``dtype=float64``.
    """
    key = (n_rows, n_bins, device, dtype)
    ones = _ONES.get(key)
    if ones is None:
        if len(_ONES) >= 64:  # many distinct shapes: do not grow without bound
            _ONES.clear()
        ones = _ONES[key] = torch.ones(n_rows, n_bins, device=device, dtype=dtype)
    angle = torch.empty(n_rows, n_bins, device=device, dtype=dtype)
    angle.uniform_(0.0, 2.0 * math.pi * magnitude, generator=generator)
    return torch.polar(ones, angle)


def ft_surrogate(x: torch.Tensor, magnitude: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Fourier-transform surrogate of ONE sample.

    x: (..., leads, T) -> same shape and dtype. Every row gets the SAME random phases:
    ``x' = Re(ifft(fft(x) * exp(i * magnitude * phi)))`` with ``phi_k = 2 pi U[0, 1)`` for
    ``0 < k < T/2``, ``phi_{T-k} = -phi_k`` (Hermitian), ``phi_0 = phi_{T/2} = 0``.

    With a Hermitian phase the full ifft is real, so ``rfft``/``irfft`` compute exactly the same
    thing with half the work: rfft keeps bins ``0 .. T//2``; bins ``1 .. (T-1)//2`` are the
    ``0 < k < T/2`` ones (for even T the last rfft bin is the Nyquist bin and keeps phase 0; odd T
    has no Nyquist bin). Each row's amplitude spectrum ``|rfft(x)|`` is unchanged.
    """
    if magnitude == 0:
        return x.clone()
    length = x.shape[-1]
    n_free = (length - 1) // 2  # number of bins with 0 < k < T/2
    spectrum = torch.fft.rfft(x.to(_compute_dtype(x)), dim=-1)  # (..., T//2 + 1) complex
    if n_free > 0:
        rotation = _random_rotations(1, n_free, magnitude, generator, x.device, _compute_dtype(x))[0]
        spectrum[..., 1:n_free + 1].mul_(rotation)
    return torch.fft.irfft(spectrum, n=length, dim=-1).to(x.dtype)


def jitter(
    x: torch.Tensor,
    sigma: float,
    generator: Optional[torch.Generator] = None,
    mode: str = "multiplicative",
) -> torch.Tensor:
    """Gaussian noise, independent per element. x: (...) -> same shape and dtype.

    ``mode="multiplicative"`` (the reference): ``x + 0.6 * x * n``, ``n ~ N(0, sigma^2)``.
    ``mode="additive"`` (the paper's wording "Gaussian noise"): ``x + n``.
    """
    if mode not in JITTER_MODES:
        raise ValueError(f"jitter mode must be one of {JITTER_MODES}, got {mode!r}")
    if sigma == 0:
        return x.clone()
    xf = x.to(_compute_dtype(x))
    out = torch.empty_like(xf)
    if mode == "multiplicative":
        # x + 0.6 x n = x * (1 + 0.6 n) and 1 + 0.6 n ~ N(1, (0.6 sigma)^2): one draw, one product.
        out.normal_(1.0, JITTER_AMPLITUDE * sigma, generator=generator)
        out.mul_(xf)
    else:
        out.normal_(0.0, sigma, generator=generator)
        out.add_(xf)
    return out.to(x.dtype)


def rescale(x: torch.Tensor, sigma: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """x: (leads, T) one sample -> ``x * s`` with one ``s ~ N(1, sigma^2)`` for all leads."""
    if sigma == 0:
        return x.clone()
    factor = 1.0 + sigma * torch.randn((), generator=generator, device=x.device).item()
    return x * factor


def time_flip(x: torch.Tensor) -> torch.Tensor:
    """x: (..., T) -> time reversed ``flip(x, -1)``."""
    return torch.flip(x, (-1,))


def sign_flip(x: torch.Tensor) -> torch.Tensor:
    """x: (...) -> ``-x``."""
    return -x


# --------------------------------------------------------------------------------------------
# Composed transforms
# --------------------------------------------------------------------------------------------

# the rules of the augmentation parameters (the constructors' and the data config's)
AUGMENT_PARAMS = {
    "ft_surr_phase_noise": Float(0, 1),  # a fraction of 2*pi
    "ft_surr_p": Float(0, 1),
    "jitter_sigma": Float(min=0),
    "jitter_mode": Choice(*JITTER_MODES),
    "rescaling_sigma": Float(min=0),
    "time_flip_p": Float(0, 1),
    "sign_flip_p": Float(0, 1),
}


def _check_params(**params: Any) -> None:
    """Raise ValueError naming the first bad parameter."""
    validate_args(AUGMENT_PARAMS, **params)


def _store_params(obj, ft_surr_phase_noise, ft_surr_p, jitter_sigma, jitter_mode, rescaling_sigma,
                  time_flip_p, sign_flip_p) -> None:
    """Validate the augmentation parameters and set them on ``obj`` (shared by both transforms)."""
    _check_params(ft_surr_phase_noise=ft_surr_phase_noise, ft_surr_p=ft_surr_p, jitter_sigma=jitter_sigma,
                  jitter_mode=jitter_mode, rescaling_sigma=rescaling_sigma, time_flip_p=time_flip_p,
                  sign_flip_p=sign_flip_p)
    obj.ft_surr_phase_noise = float(ft_surr_phase_noise)
    obj.ft_surr_p = float(ft_surr_p)
    obj.jitter_sigma = float(jitter_sigma)
    obj.jitter_mode = jitter_mode
    obj.rescaling_sigma = float(rescaling_sigma)
    obj.time_flip_p = float(time_flip_p)
    obj.sign_flip_p = float(sign_flip_p)


class ECGTransform:
    """Per-sample train augmentation, run by the dataset after cropping (CPU, single thread).

    ``__call__(x: (leads, T), generator=None) -> (leads, T)``, same dtype (float32 expected;
    half is computed in float32). CPU tensors and a CPU generator.
    Order as the reference MAE pretraining: FT surrogate (with probability ``ft_surr_p``) ->
    jitter -> rescaling -> time flip (``time_flip_p``) -> sign flip (``sign_flip_p``).
    A sigma, magnitude or probability of 0 skips its op and draws nothing for it. The input is
    never modified; when no op applies it is returned as is.

    Jitter and rescaling are fused into one noise draw and one product:
    multiplicative ``(x + 0.6 x n) * s = x * m``, ``m ~ N(s, (0.6 sigma |s|)^2)``;
    additive ``(x + n) * s = s x + m``, ``m ~ N(0, (sigma |s|)^2)``; a sign flip negates ``s``.
    The per-sample scalars (FT coin, ``s`` by Box-Muller from two float64 uniforms, flip coins)
    come from one ``torch.rand`` call.
    """

    def __init__(
        self,
        ft_surr_phase_noise: float = 0.1,
        ft_surr_p: float = 0.5,
        jitter_sigma: float = 0.25,
        jitter_mode: str = "multiplicative",
        rescaling_sigma: float = 0.5,
        time_flip_p: float = 0.0,
        sign_flip_p: float = 0.0,
    ) -> None:
        _store_params(self, ft_surr_phase_noise, ft_surr_p, jitter_sigma, jitter_mode, rescaling_sigma,
                      time_flip_p, sign_flip_p)
        # an FT surrogate with magnitude 0 is the identity: treat it as never applied
        self._ft_p = self.ft_surr_p if self.ft_surr_phase_noise > 0 else 0.0
        # scalar uniforms per sample: coins for probabilities strictly between 0 and 1, two for rescaling
        self._n_scalar_draws = (sum(0.0 < p < 1.0 for p in (self._ft_p, self.time_flip_p, self.sign_flip_p))
                                + 2 * (self.rescaling_sigma > 0))

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        length = x.shape[-1]
        y = x if x.dtype in (torch.float32, torch.float64) else x.float()

        # this sample's scalar draws in one call (cheaper than one call each), in a fixed order
        uniforms = iter(())
        if self._n_scalar_draws:
            draws = torch.rand(self._n_scalar_draws, generator=generator, dtype=torch.float64)
            uniforms = iter(draws.tolist())
        apply_ft = self._ft_p >= 1.0 or (self._ft_p > 0.0 and next(uniforms) < self._ft_p)
        scale = 1.0  # rescaling and sign flip: one factor for the whole sample
        if self.rescaling_sigma > 0:  # Box-Muller: N(0, 1) from two uniforms
            radius = math.sqrt(-2.0 * math.log(1.0 - next(uniforms)))
            scale += self.rescaling_sigma * radius * math.cos(2.0 * math.pi * next(uniforms))
        flip_time = self.time_flip_p >= 1.0 or (self.time_flip_p > 0.0 and next(uniforms) < self.time_flip_p)
        if self.sign_flip_p >= 1.0 or (self.sign_flip_p > 0.0 and next(uniforms) < self.sign_flip_p):
            scale = -scale

        if apply_ft:  # ft_surrogate(), inlined: (leads, T) -> rfft (leads, T//2 + 1) -> irfft
            n_free = (length - 1) // 2
            spectrum = torch.fft.rfft(y, dim=-1)
            if n_free > 0:
                rotation = _random_rotations(1, n_free, self.ft_surr_phase_noise, generator, y.device, y.dtype)[0]
                spectrum[..., 1:n_free + 1].mul_(rotation)
            y = torch.fft.irfft(spectrum, n=length, dim=-1)

        if self.jitter_sigma > 0:  # jitter and rescaling fused: one noise draw, one product
            out = torch.empty(y.shape, dtype=y.dtype, device=y.device)
            if self.jitter_mode == "multiplicative":  # (y + 0.6 y n) s = y m, m ~ N(s, (0.6 sigma s)^2)
                out.normal_(scale, JITTER_AMPLITUDE * self.jitter_sigma * abs(scale), generator=generator)
                y = out.mul_(y)
            else:  # (y + n) s = s y + m, m ~ N(0, (sigma s)^2)
                out.normal_(0.0, self.jitter_sigma * abs(scale), generator=generator)
                y = out.add_(y, alpha=scale)
        elif scale != 1.0:
            y = y * scale

        if flip_time:
            y = time_flip(y)
        return y.to(x.dtype)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(ft_surr_phase_noise={self.ft_surr_phase_noise}, "
                f"ft_surr_p={self.ft_surr_p}, jitter_sigma={self.jitter_sigma}, "
                f"jitter_mode={self.jitter_mode!r}, rescaling_sigma={self.rescaling_sigma}, "
                f"time_flip_p={self.time_flip_p}, sign_flip_p={self.sign_flip_p})")


class BatchECGTransform(nn.Module):
    """Batched train augmentation on the training device, same distribution as ``ECGTransform``.

    ``forward(x: (B, 1, leads, T) or (B, leads, T), generator=None) -> same shape and dtype``.
    Every sample draws its own FT phases (shared by its leads), its own jitter noise, rescale
    factor and coin flips, all in one vectorised pass. The math runs in float32 (float64 stays
    float64), so half-precision batches get a float32 FFT. No host-device synchronisation on
    accelerators: a sample that skips the FT surrogate is selected with ``torch.where``; on
    the CPU only the selected samples are transformed.
    """

    def __init__(
        self,
        ft_surr_phase_noise: float = 0.1,
        ft_surr_p: float = 0.5,
        jitter_sigma: float = 0.25,
        jitter_mode: str = "multiplicative",
        rescaling_sigma: float = 0.5,
        time_flip_p: float = 0.0,
        sign_flip_p: float = 0.0,
    ) -> None:
        super().__init__()
        _store_params(self, ft_surr_phase_noise, ft_surr_p, jitter_sigma, jitter_mode, rescaling_sigma,
                      time_flip_p, sign_flip_p)
        self._ft_p = self.ft_surr_p if self.ft_surr_phase_noise > 0 else 0.0

    def _coins(self, p: float, batch: int, generator, device) -> Optional[torch.Tensor]:
        """(B,) bool, one Bernoulli(p) per sample; None when p == 0 (nothing drawn)."""
        if p <= 0.0:
            return None
        if p >= 1.0:
            return torch.ones(batch, dtype=torch.bool, device=device)
        return torch.rand(batch, generator=generator, device=device) < p

    def _ft_surrogate(self, x: torch.Tensor, apply: torch.Tensor, generator) -> torch.Tensor:
        """x: (B, L, T) float, apply: (B,) bool -> (B, L, T); per-sample phases shared by leads."""
        batch, _, length = x.shape
        n_free = (length - 1) // 2
        if n_free == 0:
            return x
        rotation = _random_rotations(batch, n_free, self.ft_surr_phase_noise, generator, x.device, x.dtype)

        def surrogate(signal, rot):  # (b, L, T), (b, n_free) -> (b, L, T)
            spectrum = torch.fft.rfft(signal, dim=-1)
            spectrum[..., 1:n_free + 1].mul_(rot[:, None, :])
            return torch.fft.irfft(spectrum, n=length, dim=-1)

        if x.device.type == "cpu":  # transform only the selected samples
            if bool(apply.all()):
                return surrogate(x, rotation)
            index = apply.nonzero().squeeze(1)
            if index.numel() == 0:  # none selected: MKL refuses an FFT over an empty batch
                return x
            out = x.clone()
            out[index] = surrogate(x[index], rotation[index])
            return out
        return torch.where(apply[:, None, None], surrogate(x, rotation), x)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if x.dim() not in (3, 4) or (x.dim() == 4 and x.shape[1] != 1):
            raise ValueError(f"expected a batch of shape (B, 1, leads, T) or (B, leads, T), "
                             f"got {tuple(x.shape)}")
        if generator is not None and generator.device.type != x.device.type:
            raise ValueError(f"the generator lives on {generator.device} but the batch on {x.device}; "
                             "create it with torch.Generator(device=x.device)")
        shape, dtype, device = x.shape, x.dtype, x.device
        batch, length = shape[0], shape[-1]
        y = x.reshape(batch, -1, length).to(_compute_dtype(x))  # (B, L, T)

        apply_ft = self._coins(self._ft_p, batch, generator, device)
        if apply_ft is not None:
            y = self._ft_surrogate(y, apply_ft, generator)

        # (B, 1, 1) per-sample factor: rescaling and sign flip
        scale = None
        if self.rescaling_sigma > 0:
            scale = torch.randn(batch, generator=generator, device=device, dtype=y.dtype)
            scale = scale.mul_(self.rescaling_sigma).add_(1.0)
        flip_time = self._coins(self.time_flip_p, batch, generator, device)
        flip_sign = self._coins(self.sign_flip_p, batch, generator, device)
        if flip_sign is not None:
            sign = 1.0 - 2.0 * flip_sign.to(y.dtype)
            scale = sign if scale is None else scale * sign
        if scale is not None:
            scale = scale[:, None, None]

        if self.jitter_sigma > 0:
            noise = torch.randn(y.shape, generator=generator, device=device, dtype=y.dtype)
            if self.jitter_mode == "multiplicative":  # (x + 0.6 x n) * s = x * ((1 + 0.6 n) * s)
                noise.mul_(JITTER_AMPLITUDE * self.jitter_sigma).add_(1.0)
                if scale is not None:
                    noise.mul_(scale)
                y = noise.mul_(y)
            else:  # (x + n) * s
                y = noise.mul_(self.jitter_sigma).add_(y)
                if scale is not None:
                    y.mul_(scale)
        elif scale is not None:
            y = y * scale

        if flip_time is not None:
            y = torch.where(flip_time[:, None, None], torch.flip(y, (-1,)), y)
        return y.reshape(shape).to(dtype)

    def extra_repr(self) -> str:
        return (f"ft_surr_phase_noise={self.ft_surr_phase_noise}, ft_surr_p={self.ft_surr_p}, "
                f"jitter_sigma={self.jitter_sigma}, jitter_mode={self.jitter_mode!r}, "
                f"rescaling_sigma={self.rescaling_sigma}, time_flip_p={self.time_flip_p}, "
                f"sign_flip_p={self.sign_flip_p}")


# --------------------------------------------------------------------------------------------
# From the data config
# --------------------------------------------------------------------------------------------

# the data-config keys build_ecg_transforms reads (configs/data/ecg.yaml defines them) and their rules
CONFIG_SCHEMA = {"augment": Bool(), "augment_device": Choice(*AUGMENT_DEVICES), **AUGMENT_PARAMS}
CONFIG_KEYS = tuple(CONFIG_SCHEMA)


def build_ecg_transforms(
    data_cfg: Mapping[str, Any],
) -> Tuple[Optional[ECGTransform], Optional[BatchECGTransform]]:
    """The train augmentation a data config asks for: ``(cpu_transform, batch_transform)``.

    Keys read (each must be present; others are ignored): ``augment`` (bool),
    ``augment_device`` (``"cpu"``: per sample in the DataLoader workers -> ``(ECGTransform, None)``;
    ``"device"``: batched on the training device -> ``(None, BatchECGTransform)``),
    ``ft_surr_phase_noise``, ``ft_surr_p``, ``jitter_sigma``, ``jitter_mode``, ``rescaling_sigma``,
    ``time_flip_p``, ``sign_flip_p``. ``augment: false`` gives ``(None, None)``. The values are
    checked either way; a bad one raises ``ConfigError``.
    """
    cfg = {key: data_cfg[key] for key in CONFIG_KEYS}
    if not isinstance(cfg["augment"], bool):
        raise ConfigError(f"data.augment must be true or false, got {cfg['augment']!r}")
    if cfg["augment_device"] not in AUGMENT_DEVICES:
        raise ConfigError(
            f"data.augment_device must be 'auto', 'cpu' (per sample in the DataLoader workers) or 'device' "
            f"(batched on the training device), got {cfg['augment_device']!r}")
    params = {key: cfg[key] for key in CONFIG_KEYS if key not in ("augment", "augment_device")}
    try:
        _check_params(**params)
    except ValueError as err:
        raise ConfigError(f"data.{err}") from None
    if not cfg["augment"]:
        return None, None
    if resolve_augment_device(cfg["augment_device"]) == "cpu":
        return ECGTransform(**params), None
    return None, BatchECGTransform(**params)
