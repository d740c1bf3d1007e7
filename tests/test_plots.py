"""The plots of an evaluation: EER / minDCF against the dim, and DET curves that stay readable.

Scores are drawn from two Gaussians (targets shifted up by a separation that grows with the
dim), over the same trials for every row, as `launch/evaluate.py` gives them.
"""

import argparse

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.image import imread  # noqa: E402

from mrl_dist.eval.det_plot import det_figure  # noqa: E402
from mrl_dist.eval.dims_plot import dims_figure, split_row  # noqa: E402
from mrl_dist.eval.metrics import det_curve, verification_report  # noqa: E402
from mrl_dist.eval.plots import chosen_dims, det_panels, dims_target, write_evaluation_plots  # noqa: E402

DIMS = [32, 64, 128, 192, 256]
LABELS = (np.arange(2000) % 2 == 0).astype(np.int64)


def rows(seed: int, asnorm: bool = True, pca: bool = False) -> dict[str, np.ndarray]:
    """Scores per row name: every dim and native, with `asnorm@` copies, with `pca@` ones."""
    rng = np.random.default_rng(seed)
    kinds = [""] + (["asnorm@"] if asnorm else []) + (["pca@"] if pca else [])
    names = [f"{kind}{dim}" for kind in kinds for dim in [*DIMS, "native"] if not (kind == "pca@" and dim == "native")]
    return {name: rng.standard_normal(LABELS.size) + (1.5 + 0.1 * index) * LABELS for index, name in enumerate(names)}


def two_checkpoints() -> tuple[dict, list[dict], list[str]]:
    """evaluate's view of two checkpoints with AS-norm: prefixed scores, reports, labels."""
    labels, scores, reports = ["runA", "runB"], {}, []
    for seed, label in enumerate(labels):
        mine = rows(seed)
        scores.update({f"{label}:{name}": values for name, values in mine.items()})
        reports.append(verification_report(mine, LABELS))
    return scores, reports, labels


def labelled_lines(axes) -> list:
    return [line for line in axes.get_lines() if not line.get_label().startswith("_")]


def assert_outside(figure, legend, axes_list) -> None:
    """The legend overlaps none of the axes and lies inside the figure (not cut off)."""
    renderer = figure.canvas.get_renderer()
    figure.draw(renderer)
    box = legend.get_window_extent(renderer)
    for axes in axes_list:
        assert not box.overlaps(axes.get_window_extent(renderer)), "legend covers the plot"
    page = figure.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1


def test_row_names_split_into_kind_and_dim():
    assert split_row("64") == ("", 64)
    assert split_row("native") == ("", None)
    assert split_row("asnorm@128") == ("asnorm", 128)
    assert split_row("asnorm@native") == ("asnorm", None)
    assert split_row("pooled") is None


def test_dims_plot_goes_beside_the_det_plot():
    from pathlib import Path

    assert dims_target(Path("run/best.det.png")) == Path("run/best.dims.png")
    assert dims_target(Path("plots/compare.png")) == Path("plots/compare.dims.png")


def test_dims_plot_draws_a_line_per_checkpoint_and_kind_and_a_native_line_each():
    _, reports, labels = two_checkpoints()
    figure = dims_figure(dict(zip(labels, reports)))
    eer_axes, dcf_axes = figure.axes
    # per checkpoint: MRL dims, native, asnorm dims, asnorm native
    assert len(labelled_lines(eer_axes)) == len(labelled_lines(dcf_axes)) == 2 * 4
    lines = {line.get_label(): line for line in labelled_lines(eer_axes)}
    assert list(lines["runA MRL"].get_xdata()) == DIMS
    assert np.allclose(lines["runA MRL"].get_ydata(), [100 * reports[0]["eer"][str(d)] for d in DIMS])
    native = lines["runB native"].get_ydata()
    assert np.allclose(native, 100 * reports[1]["eer"]["native"])  # a horizontal reference line


def test_dims_plot_has_a_log2_axis_with_the_dims_as_ticks():
    _, reports, labels = two_checkpoints()
    for axes in dims_figure(dict(zip(labels, reports))).axes:
        assert axes.get_xscale() == "log"
        assert list(axes.get_xticks()) == DIMS
        assert [tick.get_text() for tick in axes.get_xticklabels()] == [str(d) for d in DIMS]


def test_pca_rows_are_drawn_as_the_pca_truncation_reference():
    report = verification_report(rows(0, asnorm=False, pca=True), LABELS)
    labels = [line.get_label() for line in labelled_lines(dims_figure({"best": report}).axes[0])]
    assert sorted(labels) == ["MRL", "PCA truncation", "native"]


def test_dims_plot_legend_sits_below_both_panels_outside_them():
    _, reports, labels = two_checkpoints()
    figure = dims_figure(dict(zip(labels, reports)))
    assert_outside(figure, figure.legends[0], figure.axes)


def test_dims_plot_of_native_only_reports_is_refused_naming_why():
    report = verification_report({"native": rows(0)["native"]}, LABELS)
    with pytest.raises(ValueError, match="only its native embedding"):
        dims_figure({"plain": report})


def test_det_draws_the_smallest_middle_and_largest_dims_and_native_by_default():
    assert chosen_dims(DIMS) == {32, 128, 256}
    assert chosen_dims([64]) == {64}
    panels = det_panels(list(rows(0)), ["best"])
    assert panels == {"": ["32", "128", "256", "native", "asnorm@32", "asnorm@128", "asnorm@256", "asnorm@native"]}


def test_det_gives_each_checkpoint_a_panel_and_all_dims_on_request():
    scores, _, labels = two_checkpoints()
    panels = det_panels(list(scores), labels)
    assert list(panels) == labels and all(len(names) == 8 for names in panels.values())
    everything = det_panels(list(scores), labels, all_dims=True)
    assert sum(len(names) for names in everything.values()) == len(scores) == 24


def test_det_panels_keep_their_legends_outside_the_axes():
    scores, _, labels = two_checkpoints()
    panels = det_panels(list(scores), labels)
    curves = {name: det_curve(scores[name], LABELS)[:2] for names in panels.values() for name in names}
    figure = det_figure(curves, "runA vs runB", panels)
    assert [axes.get_title() for axes in figure.axes] == labels
    for axes in figure.axes:
        assert len(labelled_lines(axes)) == 8
        assert_outside(figure, axes.get_legend(), figure.axes)
    colours = {line.get_label().split(" ")[0]: line.get_color() for line in labelled_lines(figure.axes[0])}
    assert colours["32"] == colours["asnorm@32"] != colours["256"]  # a dim keeps its colour across kinds


def test_evaluation_plots_are_written_as_readable_pngs_and_can_be_turned_off(tmp_path, capsys):
    scores, reports, labels = two_checkpoints()
    args = argparse.Namespace(no_det=False, det_all_dims=False, no_dims_plot=False)
    det = tmp_path / "comparison.det.png"
    assert write_evaluation_plots(args, scores, LABELS, reports, labels, det, "runA vs runB") == det
    for path in (det, tmp_path / "comparison.dims.png"):
        image = imread(path)
        assert image.ndim == 3 and image.shape[0] > 400 and image.shape[1] > 800
    assert str(tmp_path / "comparison.dims.png") in capsys.readouterr().err

    quiet = tmp_path / "quiet"
    args = argparse.Namespace(no_det=True, det_all_dims=False, no_dims_plot=True)
    assert write_evaluation_plots(args, scores, LABELS, reports, labels, quiet / "x.det.png", "t") is None
    assert not quiet.exists()


@pytest.mark.slow
def test_evaluate_writes_the_dims_plot_beside_the_det_plot_unless_told_not_to(tmp_path, make_shards, capsys):
    import torch

    from mrl_dist.demo.corpus import make_demo_corpus
    from mrl_dist.eval.cli import evaluate_main
    from mrl_dist.models import ReDimNetMRL, build_preset

    corpus = make_demo_corpus(tmp_path / "corpus", speakers=4, utterances=3, seed=0, test_fraction=0.5)
    make_shards.pack_split(
        [corpus.test_dir], tmp_path / "shards", "val", trials=corpus.trials, workers=1, progress=False
    )
    torch.manual_seed(0)
    checkpoint = tmp_path / "run" / "best.pt"
    checkpoint.parent.mkdir()
    ReDimNetMRL.from_redimnet(build_preset("tiny"), head_init="pretrained").save_checkpoint(checkpoint)
    argv = ["--checkpoint", str(checkpoint), "--data", str(tmp_path / "shards" / "val.manifest.json")]
    assert evaluate_main(argv + ["--max-seconds", "1"]) == 0
    assert imread(tmp_path / "run" / "best.dims.png").ndim == 3
    assert str(tmp_path / "run" / "best.dims.png") in capsys.readouterr().err

    (tmp_path / "run" / "best.dims.png").unlink()
    assert evaluate_main(argv + ["--max-seconds", "1", "--no-dims-plot", "--no-det"]) == 0
    assert not (tmp_path / "run" / "best.dims.png").exists()
