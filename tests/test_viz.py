"""Search pictures (cells, alphas, curves) and `nasdeploy show`."""

import shutil

import pytest
import torch
from click.testing import CliRunner

from nasdeploy.artifacts import RunDir, write_jsonl
from nasdeploy.cli import main
from nasdeploy.space.genotype import GENOTYPES
from nasdeploy.viz import cell_dot, plot_cell, render_search

PNG = b"\x89PNG\r\n\x1a\n"


def _fake_search(root, black_box=False):
    """A search directory as DARTS (or a black-box strategy) leaves it, without running one."""
    run = RunDir(root)
    GENOTYPES["DARTS_V2"].save(run.genotype)
    g = torch.Generator().manual_seed(0)
    if black_box:
        ops = ["max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
               "dil_conv_5x5"]
        w = torch.rand(14, 7, generator=g)
        write_jsonl(run.alphas, [{"epoch": 0, "ops": ops, "weights_normal": w, "weights_reduce": w.flip(0),
                                  "what": "op frequency"}])
        write_jsonl(run.search / "candidates.jsonl",
                    [{"index": i, "score": 0.1 * i, "best_score": 0.1 * i} for i in range(5)])
    else:
        write_jsonl(run.alphas, [{"epoch": e, "alphas_normal": torch.randn(14, 8, generator=g),
                                  "alphas_reduce": torch.randn(14, 8, generator=g)} for e in range(2)])
    write_jsonl(run.search_metrics, [
        {"epoch": e, "train_loss": 2.0 - e, "val_loss": 2.1 - e, "train_acc": 0.3 + 0.2 * e, "val_acc": 0.3 + 0.1 * e,
         "param_free_share": 0.25, "predicted_latency_ms": 1.5 - 0.1 * e} for e in range(3)])
    return run


@pytest.mark.parametrize("black_box", [False, True])
def test_render_search_writes_nonempty_png_and_svg(tmp_path, black_box):
    run = _fake_search(tmp_path, black_box)
    files = render_search(tmp_path)
    assert set(files) == {"cells_normal.png", "cells_normal.svg", "cells_reduce.png", "cells_reduce.svg",
                          "alphas.png", "curves.png"}
    for name, path in files.items():
        assert path.parent == run.search and path.stat().st_size > 1000, name
        data = path.read_bytes()
        assert data.startswith(PNG) if name.endswith(".png") else b"<svg" in data, name
    # nothing but the pictures was added (atomic writes leave no temp files)
    assert not [p for p in run.search.iterdir() if p.name.startswith(".")]


def test_cell_dot_names_every_edge_and_op():
    g = GENOTYPES["DARTS_V2"]
    dot = cell_dot(g.normal, g.normal_concat, "normal")
    assert dot.startswith("digraph") and dot.count("->") == len(g.normal) + len(g.normal_concat)
    assert 'n0 -> n2 [label="sep_conv_3x3"' in dot and 'n2 -> n5 [label="dil_conv_3x3"' in dot


def test_matplotlib_cell_drawing_without_graphviz(tmp_path):
    g = GENOTYPES["DARTS_V1"]
    png, svg = plot_cell(g.reduce, g.reduce_concat, tmp_path / "cell", "reduce", engine="matplotlib")
    assert png.read_bytes().startswith(PNG) and b"<svg" in svg.read_bytes()


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot binary is not installed")
def test_graphviz_cell_drawing(tmp_path):
    g = GENOTYPES["DARTS_V2"]
    png, svg = plot_cell(g.normal, g.normal_concat, tmp_path / "cell", "normal", engine="graphviz")
    assert png.read_bytes().startswith(PNG) and b"sep_conv_3x3" in svg.read_bytes()


def test_show_prints_the_genotype_and_renders(tmp_path):
    run = _fake_search(tmp_path)
    res = CliRunner().invoke(main, ["show", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "normal  n2=sep_conv_3x3(0)+sep_conv_3x3(1)" in res.output
    assert "reduce  n2=max_pool_3x3(0)+max_pool_3x3(1)" in res.output
    assert "curves.png" in res.output and (run.search / "cells_normal.svg").stat().st_size > 1000


def test_show_without_a_search_fails_with_one_error_line(tmp_path):
    res = CliRunner().invoke(main, ["show", str(tmp_path)])
    assert res.exit_code == 1
    assert res.output.strip().startswith("Error:") and "genotype.json" in res.output


def test_save_figure_is_atomic_and_keeps_the_old_picture_when_drawing_fails(tmp_path):
    from matplotlib.figure import Figure

    from nasdeploy.viz import save_figure

    path = tmp_path / "plot.png"
    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    save_figure(fig, path)
    first = path.read_bytes()
    assert first.startswith(PNG)
    broken = Figure(figsize=(2, 2))
    broken.add_subplot().set_title("$\\unknowncommand$")  # mathtext fails while rendering
    with pytest.raises(ValueError):
        save_figure(broken, path)
    assert path.read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]


def test_curves_count_epochs_from_one_like_the_cli(tmp_path, monkeypatch):
    import nasdeploy.viz as viz

    figs = []
    monkeypatch.setattr(viz, "save_figure", lambda fig, path: figs.append(fig) or path)
    viz.plot_curves([{"epoch": e, "train_loss": 1.0 / (e + 1)} for e in range(3)], tmp_path / "c.png")
    (line,) = figs[0].axes[0].lines
    assert list(line.get_xdata()) == [1, 2, 3]  # records 0, 1, 2 = the CLI's "epoch 1/3 .. 3/3"
