"""Pictures of a search: cell diagrams, the alpha heat map, learning curves (PNG and SVG).

Cells are drawn by graphviz's ``dot`` when that binary is on the PATH (the
reference DARTS ``visualize.py`` look), else by matplotlib. Matplotlib is
used through ``Figure`` objects only (no pyplot, no backend switch), so
drawing changes no process-wide state; every file is written atomically.
"""

from __future__ import annotations

import io
import math
import shutil
import subprocess
from pathlib import Path

from .artifacts import RunDir, atomic_write, read_jsonl
from .space.genotype import Genotype

# One colour per op, shared by the diagrams and the legend (parameter-free ops in greys).
OP_COLORS = {
    "skip_connect": "#7f7f7f",
    "max_pool_3x3": "#bcbd22",
    "avg_pool_3x3": "#8c8c3c",
    "sep_conv_3x3": "#1f77b4",
    "sep_conv_5x5": "#17becf",
    "sep_conv_7x7": "#9edae5",
    "dil_conv_3x3": "#d62728",
    "dil_conv_5x5": "#ff9896",
    "none": "#dddddd",
}


def _node_name(n: int) -> str:
    return {0: "c_{k-2}", 1: "c_{k-1}"}.get(n, str(n - 2))


def cell_dot(edges, concat, title: str = "") -> str:
    """The graphviz source of one cell (nodes 0, 1 are the inputs, ``c_{k}`` the output)."""
    lines = ["digraph cell {", '  rankdir=LR; bgcolor="white";',
             '  node [style="filled,rounded", shape=rect, fontname="helvetica", fontsize=16];',
             '  edge [fontname="helvetica", fontsize=12];']
    if title:
        lines.append(f'  label="{title}"; labelloc=t; fontsize=18;')
    steps = len(edges) // 2
    for n in (0, 1):
        lines.append(f'  n{n} [label="{_node_name(n)}", fillcolor="darkseagreen2"];')
    for i in range(steps):
        lines.append(f'  n{i + 2} [label="{i}", fillcolor="lightblue", shape=circle];')
    lines.append('  out [label="c_{k}", fillcolor="palegoldenrod"];')
    for k, (op, j) in enumerate(edges):
        color = OP_COLORS.get(op, "black")
        lines.append(f'  n{j} -> n{2 + k // 2} [label="{op}", color="{color}", fontcolor="{color}"];')
    for n in concat:
        lines.append(f'  n{n} -> out [color="gray"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def save_figure(fig, path: Path) -> Path:
    """Write a matplotlib figure (format from the suffix) atomically: temp file, then rename."""
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip("."), dpi=120, bbox_inches="tight")
    return atomic_write(path, buf.getvalue())


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h))


def _draw_cell_matplotlib(edges, concat, title: str):
    """A layered drawing: inputs left, nodes in order, the output right; edges labelled by op."""
    import numpy as np
    from matplotlib.patches import FancyArrowPatch

    steps = len(edges) // 2
    pos = {0: (0.0, 1.0), 1: (0.0, -1.0)}
    for i in range(steps):
        pos[2 + i] = (1.0 + i, 0.6 * (-1) ** i)
    pos["out"] = (steps + 1.0, 0.0)
    fig = _figure(2.2 * (steps + 2), 3.6)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_xlim(-0.6, steps + 1.6)
    ax.set_ylim(-1.8, 1.8)
    if title:
        ax.set_title(title)

    def arrow(a, b, color, rad, label=None):
        (x0, y0), (x1, y1) = pos[a], pos[b]
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>",
                                     mutation_scale=12, color=color, lw=1.6, shrinkA=16, shrinkB=16))
        if label:
            # arc3 bends in display space: control point = mid + rad * (dy, -dx); the curve's
            # midpoint lies half-way to it
            (p0, p1) = ax.transData.transform([(x0, y0), (x1, y1)])
            dx, dy = p1 - p0
            mid = (p0 + p1) / 2 + 0.5 * rad * np.array([dy, -dx])
            mx, my = ax.transData.inverted().transform(mid)
            ax.text(mx, my, label, color=color, fontsize=8, ha="center", va="center",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})

    for k, (op, j) in enumerate(edges):
        node = 2 + k // 2
        rad = 0.0 if node - j == 1 or j < 2 and node == 2 else 0.25 * (1 if k % 2 else -1)
        arrow(j, node, OP_COLORS.get(op, "black"), rad, op)
    for n in concat:
        arrow(n, "out", "#b0b0b0", 0.15 if n % 2 else -0.15)
    for n, (x, y) in pos.items():
        label = "c_{k}" if n == "out" else _node_name(n)
        fc = "palegoldenrod" if n == "out" else "darkseagreen" if n in (0, 1) else "lightblue"
        ax.text(x, y, f"${label}$" if "_" in label else label, ha="center", va="center", fontsize=11,
                bbox={"boxstyle": "round,pad=0.4", "fc": fc, "ec": "#555555"})
    return fig


def plot_cell(edges, concat, stem: str | Path, title: str = "", engine: str = "auto") -> list[Path]:
    """Write ``stem.png`` and ``stem.svg`` of one cell; ``engine`` is auto | graphviz | matplotlib."""
    stem = Path(stem)
    dot = shutil.which("dot")
    if engine == "graphviz" and dot is None:
        raise FileNotFoundError("graphviz's dot binary is not on the PATH")
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    if dot is not None and engine in ("auto", "graphviz"):
        src = cell_dot(edges, concat, title).encode()
        for p in paths:
            res = subprocess.run([dot, f"-T{p.suffix[1:]}"], input=src, capture_output=True, check=True)
            atomic_write(p, res.stdout)
        return paths
    fig = _draw_cell_matplotlib(edges, concat, title)
    for p in paths:
        save_figure(fig, p)
    return paths


def plot_alphas(normal, reduce, ops, path: str | Path, title: str = "softmax(alpha)", steps: int | None = None,
                chosen: Genotype | None = None):
    """Heat map of two (edges x ops) weight matrices, rows labelled ``node<-input``.

    Each panel's colour scale spans that matrix's own range (alphas that barely move still show
    their ranking); the edges ``chosen`` keeps are outlined, and every row ends with its margin:
    the strongest non-``none`` op's weight minus the runner-up's.
    """
    import numpy as np
    import torch
    from matplotlib.patches import Rectangle

    from .space.cell import alpha_rows, op_margins

    normal, reduce = np.asarray(normal, dtype=float), np.asarray(reduce, dtype=float)
    k = normal.shape[0]
    steps = steps or int(round((-3 + math.sqrt(9 + 8 * k)) / 2))  # k = steps * (steps + 3) / 2
    rows = [f"{i}<-{_node_name(j)}" for i in range(steps) for j in range(2 + i)]
    fig = _figure(3 + 1.1 * len(ops) * 2, 1.4 + 0.32 * k)
    axes = fig.subplots(1, 2, sharey=True)
    kept = (chosen.normal, chosen.reduce) if chosen is not None else (None, None)
    for ax, mat, name, edges in zip(axes, (normal, reduce), ("normal", "reduce"), kept):
        lo, hi = float(mat.min()), float(mat.max())
        hi = hi if hi > lo else lo + 1e-9
        im = ax.imshow(mat, cmap="viridis", vmin=lo, vmax=hi, aspect="auto")
        ax.set_xticks(range(len(ops)), ops, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(k), rows[:k], fontsize=8)
        for (r, c), v in np.ndenumerate(mat):
            ax.text(c, r, f"{v:.3f}", ha="center", va="center", fontsize=6,
                    color="white" if (v - lo) < 0.6 * (hi - lo) else "black")
        margins = op_margins(torch.as_tensor(mat), ops)
        for r, m in enumerate(margins.tolist()):
            ax.text(len(ops) - 0.4, r, f"Δ{m:.3f}", ha="left", va="center", fontsize=6)
        if edges is not None:
            for row, (op, _) in zip(alpha_rows(edges), edges):
                if op in ops:
                    ax.add_patch(Rectangle((ops.index(op) - 0.5, row - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
        ax.set_title(f"{name}: weights {lo:.3f}–{hi:.3f}, median margin {float(margins.median()):.3f}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.05, pad=0.12)
    fig.suptitle(f"{title}  (red: kept edges; Δ: chosen op minus runner-up)" if chosen is not None else title)
    return save_figure(fig, Path(path))


def plot_curves(metrics: list[dict], path: str | Path, candidates: list[dict] | None = None) -> Path:
    """Loss, accuracy, (predicted) latency when logged, and best score per scored candidate."""
    panels = [("loss", [k for k in ("train_loss", "val_loss", "arch_loss") if any(k in m for m in metrics)]),
              ("accuracy", [k for k in ("train_acc", "val_acc") if any(k in m for m in metrics)])]
    lat = sorted({k for m in metrics for k in m if "latency" in k and isinstance(m[k], (int, float))})
    if lat or any("penalty" in m for m in metrics):
        panels.append(("latency", lat or ["penalty"]))
    if any("param_free_share" in m for m in metrics):
        panels.append(("param-free share (normal cell)", ["param_free_share"]))
    if candidates:
        panels.append(("candidates", ["score", "best_score"]))
    fig = _figure(4.2 * len(panels), 3.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, keys) in zip(axes, panels):
        rows = candidates if name == "candidates" else metrics
        xkey = "index" if name == "candidates" else "epoch"
        shift = 1 if xkey == "epoch" else 0  # search records count epochs from 0; the CLI and titles from 1
        for key in keys:
            pts = [(r[xkey] + shift, r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), marker="." if name == "candidates" and key == "score" else "o",
                        ls="" if key == "score" else "-", ms=3, label=key)
        ax.set_title(name)
        if name.startswith("param-free"):
            ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("candidate" if name == "candidates" else "epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, Path(path))


def render_search(run_dir: str | Path, primitives=None) -> dict[str, Path]:
    """Draw every picture of ``RUN_DIR/search`` from its files; returns name -> path.

    Writes ``cells_normal.{png,svg}``, ``cells_reduce.{png,svg}``, ``alphas.png`` (when
    ``alphas.jsonl`` exists) and ``curves.png`` (when ``metrics.jsonl`` has records).
    """
    import torch

    from .space.primitives import PRIMITIVES

    run = RunDir(run_dir)
    genotype = Genotype.load(run.genotype)
    out: dict[str, Path] = {}
    for reduction, name in ((False, "normal"), (True, "reduce")):
        edges, concat = genotype.cell(reduction)
        for p in plot_cell(edges, concat, run.search / f"cells_{name}", f"{name} cell"):
            out[p.name] = p
    alphas = read_jsonl(run.alphas)
    if alphas:
        last = alphas[-1]
        if "alphas_normal" in last:  # DARTS: softmax of the architecture parameters
            n = torch.tensor(last["alphas_normal"]).softmax(-1)
            r = torch.tensor(last["alphas_reduce"]).softmax(-1)
            ops = primitives or _primitives_of(run, n.shape[1])
            if ops is None:  # no checkpoint to name the columns: the default space when it fits
                ops = PRIMITIVES if len(PRIMITIVES) == n.shape[1] else [f"op {i}" for i in range(n.shape[1])]
            what = f"softmax(alpha) after epoch {last['epoch'] + 1}"  # search records count epochs from 0
        else:  # black-box strategies: policy probabilities or op frequencies
            n, r = torch.tensor(last["weights_normal"]), torch.tensor(last["weights_reduce"])
            ops, what = last["ops"], last.get("what", "op weights")
        out["alphas.png"] = plot_alphas(n, r, list(ops), run.search / "alphas.png", what, genotype.steps, genotype)
    metrics = read_jsonl(run.search_metrics)
    if metrics:
        cands = read_jsonl(run.search / "candidates.jsonl")
        out["curves.png"] = plot_curves(metrics, run.search / "curves.png", cands or None)
    return out


def _primitives_of(run: RunDir, width: int):
    """The op names of a search from its supernet checkpoint, when they fit the alpha width."""
    from .artifacts import load_checkpoint
    from .errors import CheckpointError

    if not run.supernet.exists():
        return None
    try:
        prims = load_checkpoint(run.supernet, "supernet")["network"]["primitives"]
    except (CheckpointError, KeyError):
        return None
    return prims if len(prims) == width else None
