"""The figures (models/figures.py): ECG paper with lead names, seconds and mV, saliency kept inside each
lead's band, the clinical 3x4 layout, the MAE reconstruction, the CMR overlay and embedding maps."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from models.figures import (STANDARD_LEADS, ecg_figure, ecg_reconstruction_figure,  # noqa: E402
                        embedding_map_figure, image_overlay_figure)

FS, T = 500, 2500


def ecg(leads=12, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(T) / FS
    beats = sum(np.exp(-((t - b) ** 2) / (2 * 0.01 ** 2)) for b in np.arange(0.3, 5, 0.8))
    return (beats[None] * rng.uniform(0.5, 1.5, (leads, 1)) + 0.02 * rng.standard_normal((leads, T))).astype(np.float32)


def texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_a_12_lead_figure_names_every_lead_and_reads_in_seconds_and_millivolts():
    saliency = np.abs(np.random.default_rng(1).standard_normal((12, T)))
    fig = ecg_figure(ecg(), FS, list(STANDARD_LEADS), saliency=saliency, title="record 1")
    ax = fig.axes[0]
    assert sorted(texts(fig)) == sorted(STANDARD_LEADS)
    assert "(s)" in ax.get_xlabel() and "mV" in ax.get_ylabel()
    assert ax.get_xlim()[1] == pytest.approx(T / FS)
    assert len(fig.axes) == 2  # the colour bar
    # every overlay image sits inside one lead's band: 12 bands of equal height, none crossing another
    images = ax.get_images()
    assert len(images) == 12
    spans = sorted((im.get_extent()[2], im.get_extent()[3]) for im in images)
    height = spans[0][1] - spans[0][0]
    for (low, high), (next_low, _) in zip(spans, spans[1:]):
        assert high - low == pytest.approx(height) and high <= next_low + 1e-9
    # 1 mV is drawn as long as 0.4 s (10 mm/mV, 25 mm/s)
    assert ax.get_aspect() == pytest.approx(0.4)
    plt.close(fig)


def test_a_zscored_ecg_is_drawn_at_2_5_mm_per_sd_and_says_so():
    x = ecg()
    in_mv = ecg_figure(x, FS, list(STANDARD_LEADS))
    in_sd = ecg_figure(x, FS, list(STANDARD_LEADS), units="SD")
    assert "mV" in in_mv.axes[0].get_ylabel() and "2.5 mm/SD" in in_sd.axes[0].get_ylabel()
    trace = [line for line in in_sd.axes[0].get_lines() if len(line.get_xdata()) == T][0]
    reference = [line for line in in_mv.axes[0].get_lines() if len(line.get_xdata()) == T][0]
    ptp = np.ptp(trace.get_ydata()), np.ptp(reference.get_ydata())
    assert ptp[0] == pytest.approx(0.25 * ptp[1])
    plt.close(in_mv)
    plt.close(in_sd)


def test_a_saliency_map_of_another_shape_and_an_unknown_layout_are_refused():
    with pytest.raises(ValueError, match="saliency has shape"):
        ecg_figure(ecg(), FS, list(STANDARD_LEADS), saliency=np.zeros((12, 10)))
    with pytest.raises(ValueError, match="12x1, 3x4"):
        ecg_figure(ecg(), FS, list(STANDARD_LEADS), layout="6x2")


def test_the_clinical_3x4_layout_has_twelve_quarter_strips_and_a_rhythm_strip():
    fig = ecg_figure(ecg(), FS, list(STANDARD_LEADS), saliency=np.zeros((12, T)), layout="3x4")
    names = texts(fig)
    assert len(names) == 13 and names.count("II") == 2
    widths = sorted(round(im.get_extent()[1] - im.get_extent()[0], 3) for im in fig.axes[0].get_images())
    assert widths == [T / FS / 4] * 12 + [T / FS]  # a constant-zero map is drawn too
    plt.close(fig)
    fig = ecg_figure(ecg(3), FS, ["A", "B", "C"], layout="3x4")  # not the 12 standard leads: one row each
    assert sorted(texts(fig)) == ["A", "B", "C"]
    plt.close(fig)


def test_the_reconstruction_is_drawn_only_inside_masked_patches():
    x = ecg()
    mask = np.zeros_like(x)
    mask[:, 500:1000] = 1
    fig = ecg_reconstruction_figure(x, x + 0.1, mask, FS, list(STANDARD_LEADS))
    recon = [line for line in fig.axes[0].get_lines() if line.get_color() == "tab:blue"]
    assert len(recon) == 12
    y = recon[0].get_ydata()
    assert np.isnan(y[:500]).all() and np.isfinite(y[500:1000]).all() and np.isnan(y[1000:]).all()
    assert sorted(texts(fig)) == sorted(STANDARD_LEADS)
    plt.close(fig)


def test_image_overlay_takes_channel_first_frames_and_refuses_other_sizes():
    fig = image_overlay_figure(np.random.rand(1, 32, 32), np.random.rand(32, 32), title="cam")
    assert len(fig.axes) == 3
    plt.close(fig)
    with pytest.raises(ValueError, match="differ in size"):
        image_overlay_figure(np.random.rand(32, 32), np.random.rand(16, 16))


@pytest.mark.parametrize("labels, task", [
    (np.arange(40) % 3, None),
    (np.eye(3)[np.arange(40) % 3] + np.r_[np.zeros((38, 3)), [[1, 1, 0]], [[-1, 0, 0]]], "multilabel"),
    (np.random.rand(40, 2), "regression"),
    (None, None),
    (np.zeros((40, 0)), None),
])
def test_embedding_maps_for_every_kind_of_label(labels, task):
    fig = embedding_map_figure(np.random.rand(40, 8), labels, ["a", "b", "c"], task_type=task)
    titles = [ax.get_title() for ax in fig.axes]
    assert "PCA" in titles and "t-SNE" in titles
    plt.close(fig)


@pytest.mark.parametrize("n, d", [(1, 8), (3, 8), (20, 1)])
def test_embedding_maps_of_few_points_or_one_dimension(n, d):
    fig = embedding_map_figure(np.random.rand(n, d), np.arange(n) % 2)
    assert len(fig.axes) >= 2
    plt.close(fig)
