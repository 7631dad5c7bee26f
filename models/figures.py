"""Figures a clinician-researcher can read: ECGs on ECG paper (with a saliency overlay or an MAE
reconstruction), a CMR frame with a heat map, and 2-D maps of embeddings. Each function returns a
matplotlib ``Figure``; the caller saves (``RunLogger.log_figure``) and closes it.

ECG paper: 25 mm/s and 10 mm/mV drawn to scale (1 mm of time = 1 mm of amplitude), the grid's minor
lines every 0.04 s and 0.1 mV, major every 0.2 s and 0.5 mV, a 1 mV / 0.2 s calibration pulse at the
start of every row, lead names at the start of every lead, time in seconds. Z-scored signals
(``units="SD"``) are drawn at 2.5 mm per SD, and the axis says so.
"""
from __future__ import annotations

from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402

__all__ = ["STANDARD_LEADS", "LAYOUTS", "ecg_figure", "ecg_reconstruction_figure", "image_overlay_figure",
           "embedding_map_figure"]

STANDARD_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
LAYOUTS = ("12x1", "3x4")
CLINICAL_ROWS = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
MM_PER_S, MM_PER_MV = 25.0, 10.0
MM_PER_INCH = 25.4
SCALE = 1.25  # the printout is drawn a little larger than paper, so it stays readable on screens
CALIBRATION_S = 0.2  # width of the 1 mV calibration pulse
MV, SD_SCALE = "mV", 0.25  # z-scored signals (units SD): 1 SD drawn as 0.25 mV


class _Paper:
    """Rows of ECG strips on one axes: x in seconds, y in mV, row ``r`` centred at ``-r * band``."""

    def __init__(self, seconds: float, rows: int, band: float, title: Optional[str], extra_height: float = 0.0,
                 amplitude_label: str = ""):
        self.seconds, self.rows, self.band = seconds, rows, band
        self.x0 = -2.0 * CALIBRATION_S  # room for the calibration pulse before t = 0
        width_mm = (seconds - self.x0) * MM_PER_S
        height_mm = rows * band * MM_PER_MV
        size = (min(width_mm * SCALE / MM_PER_INCH + 1.8, 40),
                min(height_mm * SCALE / MM_PER_INCH + 1.2 + extra_height, 60))
        self.fig, self.ax = plt.subplots(figsize=size)
        if title:
            self.ax.set_title(title, fontsize=10, loc="left")
        self.top, self.bottom = band / 2, -(rows - 0.5) * band
        self._grid()
        ax = self.ax
        ax.set_xlim(self.x0, seconds)
        ax.set_ylim(self.bottom, self.top)
        step = 1.0 if seconds > 3 else (0.5 if seconds > 1 else 0.2)  # labels that do not run together
        ax.set_xticks(np.arange(0, seconds + 1e-9, step))
        ax.set_yticks([])
        ax.set_xlabel("time (s)   [25 mm/s; grid 0.04 s minor, 0.2 s major]")
        ax.set_ylabel(amplitude_label or _amplitude(MV)[1])
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)

    def _grid(self) -> None:
        ax, lines = self.ax, []
        for step, colour, width in ((0.04, "#f6c6c6", 0.4), (0.2, "#e58a8a", 0.8)):
            xs = np.arange(np.ceil(self.x0 / step) * step, self.seconds + 1e-9, step)
            ys = np.arange(np.ceil(self.bottom / (step * 2.5)) * step * 2.5, self.top + 1e-9, step * 2.5)
            segments = [[(x, self.bottom), (x, self.top)] for x in xs] + [[(self.x0, y), (self.seconds, y)] for y in ys]
            lines.append(LineCollection(segments, colors=colour, linewidths=width, zorder=0))
        for collection in lines:
            ax.add_collection(collection)

    def centre(self, row: int) -> float:
        return -row * self.band

    def calibration(self, row: int) -> None:
        y0, x = self.centre(row) - 0.5, self.x0 + 0.5 * CALIBRATION_S
        self.ax.plot([x - 0.25 * CALIBRATION_S, x, x, x + CALIBRATION_S, x + CALIBRATION_S, x + 1.25 * CALIBRATION_S],
                     [y0, y0, y0 + 1, y0 + 1, y0, y0], color="k", lw=0.8, zorder=3)

    def trace(self, row: int, t: np.ndarray, values: np.ndarray, **style) -> None:
        self.ax.plot(t, values + self.centre(row), **{"color": "k", "lw": 0.7, "zorder": 3, **style})

    def label(self, row: int, start: float, name: str) -> None:
        self.ax.text(start + 0.03, self.centre(row) + 0.36 * self.band, name, fontsize=9, fontweight="bold",
                     va="top", zorder=4)

    def overlay(self, row: int, start: float, end: float, values: np.ndarray, cmap: str, norm: Normalize) -> None:
        """``values`` over [start, end) coloured inside this row's band only."""
        c = self.centre(row)
        self.ax.imshow(values[None, :], extent=(start, end, c - self.band / 2, c + self.band / 2), cmap=cmap,
                       norm=norm, alpha=0.6, aspect="auto", interpolation="nearest", zorder=1)

    def finish(self) -> plt.Figure:
        self.ax.set_aspect(MM_PER_MV / MM_PER_S)  # imshow resets it; 1 mV = 10 mm, 1 s = 25 mm
        self.ax.set_xlim(self.x0, self.seconds)
        self.ax.set_ylim(self.bottom, self.top)
        self.fig.tight_layout()
        return self.fig


def _amplitude(units: str) -> tuple[float, str]:
    """The drawing scale of ``units`` (values x scale = paper mV) and the amplitude axis's label. A
    z-scored lead (SD) is drawn at 2.5 mm per SD: a resting lead's SD is about 0.2-0.3 mV, so the
    waves keep the size they have on paper at 10 mm/mV."""
    if units == MV:
        return 1.0, "amplitude (mV)   [10 mm/mV; grid 0.1 / 0.5 mV; pulse = 1 mV]"
    return SD_SCALE, (f"amplitude ({units})   [{MM_PER_MV * SD_SCALE:g} mm/{units}; grid {0.1 / SD_SCALE:g} / "
                      f"{0.5 / SD_SCALE:g} {units}; pulse = {1 / SD_SCALE:g} {units}]")


def _band(signal: np.ndarray) -> float:
    """Row height in mV: room for the largest lead's swing, at least 2.5 mV (the calibration pulse's 1 mV)."""
    swing = float(np.nanmax(np.ptp(signal, axis=1))) if signal.size else 0.0
    return float(np.clip(np.ceil((swing + 0.6) * 2) / 2, 2.5, 8.0))


def _centred(values: np.ndarray) -> np.ndarray:
    """A lead shifted so its median sits on the row's centre line (baseline offsets do not wander off)."""
    return values - np.nanmedian(values)


def _segments(names: Sequence[str], T: int, layout: str, rhythm_lead: str) -> list[tuple[int, int, int, int]]:
    """``(row, lead index, first sample, end sample)`` of every strip drawn."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    index = {str(n): i for i, n in enumerate(names)}
    if layout == "3x4" and set(STANDARD_LEADS) <= set(index):
        quarter = T // 4
        strips = [(r, index[lead], c * quarter, T if c == 3 else (c + 1) * quarter)
                  for r, row in enumerate(CLINICAL_ROWS) for c, lead in enumerate(row)]
        rhythm = index.get(rhythm_lead, index["II"])
        return strips + [(3, rhythm, 0, T)]
    return [(i, i, 0, T) for i in range(len(names))]


def _norm(values: np.ndarray, percentile: float = 100.0) -> tuple[Normalize, bool]:
    """Colour scale of a map: 0..max, or symmetric around 0 when it has negative values. Below 100,
    ``percentile`` of |values| tops the scale, so a few extreme samples do not wash out the rest."""
    diverging = float(np.min(values)) < 0
    top = float(np.percentile(np.abs(values), percentile)) or float(np.max(np.abs(values))) or 1.0
    return (Normalize(-top, top) if diverging else Normalize(0.0, top)), diverging


def ecg_figure(signal: np.ndarray, sampling_rate: float, lead_names: Sequence[str], *,
               saliency: Optional[np.ndarray] = None, title: Optional[str] = None, layout: str = "12x1",
               saliency_label: str = "attribution", cmap: str = "Reds", rhythm_lead: str = "II",
               units: str = MV) -> plt.Figure:
    """An ECG ``(leads, T)`` in ``units`` (mV, or SD for z-scored signals) on ECG paper. ``layout``
    12x1: one row per lead, the whole record; 3x4: the clinical rows (I aVR V1 V4 / II aVL V2 V5 / III aVF V3 V6, each column a quarter of the
    record) and a ``rhythm_lead`` strip (leads other than the standard 12 fall back to 12x1).
    ``saliency`` ``(leads, T)``: drawn as colour inside each lead's own band (a diverging scale when it
    has negative values; the colour saturates at the 99.5th percentile of |saliency|)."""
    scale, amplitude_label = _amplitude(units)
    signal = np.asarray(signal, dtype=np.float64) * scale
    if signal.ndim != 2 or len(lead_names) != signal.shape[0]:
        raise ValueError(f"signal must be (leads, T) with one name per lead; got {signal.shape} and "
                         f"{len(lead_names)} names")
    if saliency is not None:
        saliency = np.asarray(saliency, dtype=np.float64)
        if saliency.shape != signal.shape:
            raise ValueError(f"saliency has shape {saliency.shape}, the signal {signal.shape}")
    T = signal.shape[1]
    strips = _segments(lead_names, T, layout, rhythm_lead)
    paper = _Paper(T / sampling_rate, max(r for r, *_ in strips) + 1, _band(signal), title,
                   extra_height=0.4 if saliency is not None else 0.0, amplitude_label=amplitude_label)
    norm = None
    if saliency is not None:  # the top 0.5% of samples saturate, so the rest of a sparse map stays visible
        norm, diverging = _norm(saliency, percentile=99.5)
        cmap = "RdBu_r" if diverging else cmap
    t = np.arange(T) / sampling_rate
    for row in sorted({r for r, *_ in strips}):
        paper.calibration(row)
    for row, lead, start, end in strips:
        lead_values = _centred(signal[lead])
        paper.trace(row, t[start:end], lead_values[start:end])
        paper.label(row, t[start], str(lead_names[lead]))
        if start > 0:  # the lead changes here: a short separator, as printed ECGs have
            c = paper.centre(row)
            paper.ax.plot([t[start]] * 2, [c - 0.35 * paper.band, c - 0.2 * paper.band], color="k", lw=1.0, zorder=3)
        if saliency is not None:
            paper.overlay(row, start / sampling_rate, end / sampling_rate, saliency[lead, start:end], cmap, norm)
    if saliency is not None:
        mappable = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
        paper.fig.colorbar(mappable, ax=paper.ax, label=saliency_label, fraction=0.025, pad=0.01, shrink=0.6)
    return paper.finish()


def ecg_reconstruction_figure(signal: np.ndarray, reconstruction: np.ndarray, mask: np.ndarray,
                              sampling_rate: float, lead_names: Sequence[str], *, title: Optional[str] = None,
                              units: str = MV) -> plt.Figure:
    """An MAE's input (black), its masked patches (grey) and the reconstruction of those patches (blue),
    every lead ``(leads, T)`` in ``units`` on ECG paper, one row per lead."""
    scale, amplitude_label = _amplitude(units)
    signal, reconstruction, mask = (np.asarray(a, dtype=np.float64) for a in (signal, reconstruction, mask))
    signal, reconstruction = signal * scale, reconstruction * scale
    if not signal.shape == reconstruction.shape == mask.shape or len(lead_names) != signal.shape[0]:
        raise ValueError(f"signal {signal.shape}, reconstruction {reconstruction.shape} and mask {mask.shape} must "
                         f"be equal (leads, T) with one name per lead ({len(lead_names)})")
    T = signal.shape[1]
    paper = _Paper(T / sampling_rate, signal.shape[0], _band(signal), title, amplitude_label=amplitude_label)
    t = np.arange(T) / sampling_rate
    for row in range(signal.shape[0]):
        offset = np.nanmedian(signal[row])
        c = paper.centre(row)
        masked = mask[row] > 0.5
        paper.ax.fill_between(t, c - paper.band / 2, c + paper.band / 2, where=masked, color="0.55", alpha=0.3,
                              step="mid", zorder=1, label="masked" if row == 0 else None, lw=0)
        paper.calibration(row)
        paper.trace(row, t, signal[row] - offset, label="input" if row == 0 else None)
        paper.trace(row, t, np.where(masked, reconstruction[row] - offset, np.nan), color="tab:blue", lw=0.9,
                    label="reconstruction (masked part)" if row == 0 else None)
        paper.label(row, 0.0, str(lead_names[row]))
    # the legend on its own line under the title: on a short (narrow) record they would overlap
    paper.ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3, fontsize=8, frameon=False,
                    borderaxespad=0.1)
    if title:
        paper.ax.set_title(title, fontsize=10, loc="left", pad=16)
    return paper.finish()


def image_overlay_figure(image: np.ndarray, heatmap: np.ndarray, *, title: Optional[str] = None, cmap: str = "jet",
                         heatmap_label: str = "Grad-CAM") -> plt.Figure:
    """The frame (``(H, W)``, ``(1, H, W)`` or ``(3, H, W)``) in grey, and with ``heatmap`` ``(H, W)`` over it."""
    image, heatmap = np.asarray(image, dtype=np.float64), np.asarray(heatmap, dtype=np.float64)
    if image.ndim == 3:
        image = image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))
    if heatmap.ndim == 3 and heatmap.shape[0] == 1:
        heatmap = heatmap[0]
    if heatmap.shape != image.shape[:2]:
        raise ValueError(f"heatmap {heatmap.shape} and image {image.shape[:2]} differ in size")
    low, high = float(image.min()), float(image.max())
    image = (image - low) / (high - low) if high > low else np.zeros_like(image)
    norm, diverging = _norm(heatmap)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.2))
    for ax in axes:
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
    shown = axes[1].imshow(heatmap, cmap="RdBu_r" if diverging else cmap, norm=norm, alpha=0.45)
    axes[0].set_title("frame", fontsize=9)
    axes[1].set_title(heatmap_label, fontsize=9)
    fig.colorbar(shown, ax=axes[1], label=heatmap_label, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _label_groups(labels: Optional[np.ndarray], label_names: Optional[Sequence[str]], task_type: Optional[str],
                  n: int) -> tuple[Optional[np.ndarray], Optional[list], Optional[np.ndarray]]:
    """``(group per point, group names, continuous values)``: categories for class labels (multi-hot:
    the one positive class, 'multiple' or 'none'), values for regression, or nothing."""
    if labels is None:
        return None, None, None
    labels = np.asarray(labels)
    if labels.size == 0 or (labels.ndim == 2 and labels.shape[1] == 0):
        return None, None, None
    if task_type is None:
        integer = labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer)
        binary = labels.ndim == 2 and np.isin(labels, (0, 1)).all()
        task_type = "multiclass" if integer else ("multilabel" if binary else "regression")
    if task_type == "regression":
        return None, None, (labels if labels.ndim == 1 else labels[:, 0]).astype(np.float64)
    width = labels.shape[1] if labels.ndim == 2 else int(labels.max()) + 1
    names = [str(label_names[i]) if label_names is not None and i < len(label_names) else f"class {i}"
             for i in range(width)]
    if task_type == "multiclass" and labels.ndim == 1:
        return labels.astype(int), names, None
    positives = labels > 0.5
    count = positives.sum(axis=1)
    group = np.where(count == 1, positives.argmax(axis=1), np.where(count > 1, width, width + 1))
    return group, names + ["multiple", "none"], None


def _scatter(ax, points: np.ndarray, groups, names, values) -> None:
    if values is not None:
        shown = ax.scatter(points[:, 0], points[:, 1], c=values, cmap="viridis", s=8)
        ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
        return
    if groups is None:
        ax.scatter(points[:, 0], points[:, 1], s=8, color="tab:blue")
        return
    present = [g for g in np.unique(groups)]
    by_size = sorted(present, key=lambda g: -(groups == g).sum())
    shown, other = by_size[:19], by_size[19:]
    # tab10's colours are the most distinct; tab20 (pairs of shades) only when there are more groups
    colours = plt.cm.tab10(np.arange(10)) if len(shown) <= 10 else plt.cm.tab20(np.arange(20))
    for k, g in enumerate(shown):
        name = names[g]
        colour = "0.6" if name == "multiple" else ("k" if name == "none" else colours[k % len(colours)])
        at = groups == g
        ax.scatter(points[at, 0], points[at, 1], s=8, color=colour, label=f"{name} ({int(at.sum())})")
    if other:
        at = np.isin(groups, other)
        ax.scatter(points[at, 0], points[at, 1], s=8, color="0.85", label=f"other ({int(at.sum())})")
    ax.legend(fontsize=7, markerscale=1.5, loc="best", frameon=True)


def embedding_map_figure(embeddings: np.ndarray, labels: Optional[np.ndarray],
                         label_names: Optional[Sequence[str]] = None, *, task_type: Optional[str] = None, title: Optional[str] = None, max_points: int = 5000,
                         seed: int = 0, perplexity: float = 30.0) -> plt.Figure:
    """PCA and t-SNE of ``embeddings`` ``(N, D)`` to 2-D side by side, coloured by ``labels`` (class
    indices, multi-hot rows, regression targets, or None); at most ``max_points`` (a fixed subset)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    embeddings = np.asarray(embeddings, dtype=np.float64).reshape(len(embeddings), -1)
    n = len(embeddings)
    chosen = np.arange(n)
    note = ""
    if n > max_points:
        chosen = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
        note = f" (a random {max_points} of {n})"
    x = embeddings[chosen]
    groups, names, values = _label_groups(None if labels is None else np.asarray(labels)[chosen], label_names,
                                          task_type, len(chosen))
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    components = min(2, x.shape[1], len(x))
    pca = PCA(n_components=components).fit(x) if len(x) > 1 else None
    points = np.zeros((len(x), 2))
    if pca is not None:
        points[:, :components] = pca.transform(x)
        ratios = list(pca.explained_variance_ratio_) + [0.0]
        axes[0].set_xlabel(f"PC1 ({ratios[0]:.0%} var)")
        axes[0].set_ylabel(f"PC2 ({ratios[1]:.0%} var)" if components > 1 else "PC2 (none: 1-d)")
    _scatter(axes[0], points, groups, names, values)
    axes[0].set_title("PCA", fontsize=10)
    if len(x) >= 5:
        tsne = TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(perplexity, (len(x) - 1) / 3))
        _scatter(axes[1], tsne.fit_transform(np.pad(x, ((0, 0), (0, max(0, 2 - x.shape[1]))))), groups, names,
                 values)
        axes[1].set_xlabel("t-SNE 1")
        axes[1].set_ylabel("t-SNE 2")
    else:
        axes[1].text(0.5, 0.5, f"t-SNE needs at least 5 points ({len(x)} here)", ha="center", va="center",
                     transform=axes[1].transAxes)
    axes[1].set_title("t-SNE", fontsize=10)
    fig.suptitle((title or "embeddings") + note, fontsize=10)
    fig.tight_layout()
    return fig
