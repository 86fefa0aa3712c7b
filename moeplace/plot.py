"""Pictures: a grid of coloured cells (rows x columns) with a legend, as SVG (written directly, no dependency)
or PNG (through matplotlib, when installed).

The routing heat map is one such grid: a row per MoE layer, a column per expert, each cell coloured by how
often the expert is chosen relative to uniform routing (white = uniform, red = hot, blue = cold, dark = never).
A placement map can reuse :class:`Grid` with its own colours and legend.
"""

from __future__ import annotations

import io
import itertools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from moeplace.errors import MoeplaceError
from moeplace.model import ModelDescription, Role, Tensor
from moeplace.outfiles import encode_text, write_file
from moeplace.placement import HOST, Placement
from moeplace.routing import RoutingProfile

DEAD = "#3b3b3b"
# A diverging blue-white-red ramp over log2(share / uniform share), from ColorBrewer's RdBu.
_RAMP = ((-3.0, (0x21, 0x66, 0xAC)), (-1.5, (0x67, 0xA9, 0xCF)), (-0.5, (0xD1, 0xE5, 0xF0)),
         (0.0, (0xF7, 0xF7, 0xF7)), (0.5, (0xFD, 0xDB, 0xC7)), (1.5, (0xEF, 0x8A, 0x62)), (3.0, (0xB2, 0x18, 0x2B)))
_MAX_TOOLTIP_CELLS = 20_000


class PlotError(MoeplaceError):
    """A picture that cannot be written."""


@dataclass(frozen=True)
class Grid:
    """A picture of coloured cells. ``colours[r][c]`` is a ``#rrggbb`` string; ``tips`` optional per-cell text."""

    title: str
    subtitle: str
    row_title: str
    col_title: str
    row_labels: tuple[str, ...]
    colours: tuple[tuple[str, ...], ...]
    legend: tuple[tuple[str, str], ...]  # (colour, label)
    tips: tuple[tuple[str, ...], ...] | None = None
    legend_title: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.colours), len(self.colours[0]) if self.colours else 0


def ratio_colour(log2_ratio: float) -> str:
    """The ramp colour for log2(share / uniform share), clipped to +-3 (8x hotter or colder)."""
    x = min(max(log2_ratio, _RAMP[0][0]), _RAMP[-1][0])
    for (x0, c0), (x1, c1) in itertools.pairwise(_RAMP):
        if x <= x1:
            f = (x - x0) / (x1 - x0)
            return "#" + "".join(f"{round(a + f * (b - a)):02x}" for a, b in zip(c0, c1))
    raise AssertionError("unreachable: x is clipped to the ramp")  # pragma: no cover


def routing_grid(profile: RoutingProfile) -> Grid:
    """The layer x expert heat map of a routing profile."""
    n = profile.model.n_expert
    colours, tips = [], []
    for layer in profile.layers:
        c = profile.counts[layer]
        share = c / c.sum()
        ratio = share * n
        colours.append(tuple(DEAD if r == 0 else ratio_colour(math.log2(r)) for r in ratio))
        tips.append(tuple(f"layer {layer}, expert {e}: {s:.2%} of routes ({r:.2f}x uniform)"
                          for e, (s, r) in enumerate(zip(share, ratio))))
    src = profile.source
    return Grid(
        title=f"Expert routing of {profile.model.name or profile.model.arch}",
        subtitle=(f"{src.kind} profile, {src.tokens:,.0f} tokens; {n} experts, {profile.model.n_expert_used} "
                  "chosen per token"),
        row_title="layer", col_title="expert", row_labels=tuple(str(layer) for layer in profile.layers),
        colours=tuple(colours),
        legend_title="share of the layer's routes relative to uniform:",
        legend=((ratio_colour(-3), "1/8x"), (ratio_colour(-1), "1/2x"), (ratio_colour(0), "uniform"),
                (ratio_colour(1), "2x"), (ratio_colour(3), "8x or more"), (DEAD, "never chosen")),
        tips=tuple(tips),
    )


def _tick_step(n: int, max_ticks: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50... that labels at most ``max_ticks`` of ``n`` rows or columns."""
    step, mult = 1, (2, 2.5, 2)
    i = 0
    while n / step > max(1, max_ticks):
        step = round(step * mult[i % 3])
        i += 1
    return step


def render_svg(grid: Grid) -> str:
    """The grid as a standalone SVG document."""
    rows, cols = grid.shape
    cell = max(4.0, min(24.0, 960.0 / max(cols, 1), 640.0 / max(rows, 1)))
    # Row labels are numbers in a heat map but words in a placement map: leave room for the longest.
    left = max(56.0, 22.0 + 6.6 * max((len(x) for x in grid.row_labels), default=0))
    top, right = 64.0, 16.0
    legend_top = top + rows * cell + 34 + (16 if grid.legend_title else 0)
    height = legend_top + 30
    # No font metrics in plain SVG: estimate text widths (sans-serif, ~0.6 em per character) to size the canvas.
    legend_width = sum(26 + 7 * len(label) for _, label in grid.legend)
    width = max(left + cols * cell, left + legend_width, left + 9.0 * len(grid.title),
                left + 6.6 * max(len(grid.subtitle), len(grid.legend_title))) + right
    tips = grid.tips is not None and rows * cols <= _MAX_TOOLTIP_CELLS
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif" font-size="11">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{left}" y="20" font-size="15" font-weight="bold">{escape(grid.title)}</text>',
        f'<text x="{left}" y="38" fill="#444">{escape(grid.subtitle)}</text>',
        '<g shape-rendering="crispEdges">',
    ]
    for r in range(rows):
        y = top + r * cell
        for c in range(cols):
            rect = (f'<rect x="{left + c * cell:.2f}" y="{y:.2f}" width="{cell:.2f}" height="{cell:.2f}" '
                    f'fill="{grid.colours[r][c]}"')
            if tips:
                assert grid.tips is not None
                out.append(f"{rect}><title>{escape(grid.tips[r][c])}</title></rect>")
            else:
                out.append(rect + "/>")
    out.append("</g>")
    rstep = _tick_step(rows, max(1, int(rows * cell / 14)))
    for r in range(0, rows, rstep):
        out.append(f'<text x="{left - 4}" y="{top + (r + 0.5) * cell + 4:.2f}" text-anchor="end">'
                   f"{escape(grid.row_labels[r])}</text>")
    cstep = _tick_step(cols, max(1, int(cols * cell / 28)))
    for c in range(0, cols, cstep):
        out.append(f'<text x="{left + (c + 0.5) * cell:.2f}" y="{top + rows * cell + 14:.2f}" '
                   f'text-anchor="middle">{c}</text>')
    out.append(f'<text x="{left + cols * cell / 2:.2f}" y="{top + rows * cell + 28:.2f}" text-anchor="middle" '
               f'fill="#444">{escape(grid.col_title)}</text>')
    out.append(f'<text x="14" y="{top + rows * cell / 2:.2f}" text-anchor="middle" fill="#444" '
               f'transform="rotate(-90 14 {top + rows * cell / 2:.2f})">{escape(grid.row_title)}</text>')
    if grid.legend_title:
        out.append(f'<text x="{left}" y="{legend_top - 6:.2f}" fill="#444">{escape(grid.legend_title)}</text>')
    x = left
    for colour, label in grid.legend:
        out.append(f'<rect x="{x:.2f}" y="{legend_top:.2f}" width="14" height="14" fill="{colour}" stroke="#999"/>')
        out.append(f'<text x="{x + 18:.2f}" y="{legend_top + 11:.2f}">{escape(label)}</text>')
        x += 26 + 7 * len(label)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _rgb(colour: str) -> tuple[float, float, float]:
    return tuple(int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5))  # type: ignore[return-value]


def render_png(grid: Grid, name: str = "picture.png") -> bytes:
    """The grid as PNG bytes through matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        raise PlotError("PNG output needs matplotlib (pip install matplotlib); SVG needs nothing: "
                        f"write {Path(name).with_suffix('.svg').name}") from None
    rows, cols = grid.shape
    image = np.array([[_rgb(c) for c in row] for row in grid.colours])
    fig, ax = plt.subplots(figsize=(min(16, 2 + cols * 0.12 + 1), min(12, 2 + rows * 0.12 + 1)), dpi=120)
    ax.imshow(image, aspect="auto", interpolation="nearest")
    ax.set_title(f"{grid.title}\n{grid.subtitle}", fontsize=9)
    ax.set_xlabel(grid.col_title)
    ax.set_ylabel(grid.row_title)
    rstep = _tick_step(rows, 40)
    ax.set_yticks(range(0, rows, rstep), [grid.row_labels[r] for r in range(0, rows, rstep)])
    ax.legend(handles=[Patch(facecolor=c, edgecolor="#999", label=label) for c, label in grid.legend],
              loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(grid.legend), fontsize=8, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_grid(grid: Grid, path: str | os.PathLike[str]) -> Path:
    """Writes ``path`` as SVG or PNG by its suffix."""
    p = Path(path)
    suffix = p.suffix.lower()
    if not p.name:  # '' (an unset variable), '.' or '/'
        raise PlotError("empty path given for the picture: name a .svg or .png file")
    if suffix not in (".svg", ".png"):
        raise PlotError(f"{p.name}: write the picture as .svg or .png")
    return write_file(p, encode_text(render_svg(grid)) if suffix == ".svg" else render_png(grid, p.name))


def plot_profile(profile: RoutingProfile, path: str | os.PathLike[str]) -> Path:
    """Draws the layer x expert heat map of ``profile`` to ``path`` (.svg always works; .png needs matplotlib)."""
    return write_grid(routing_grid(profile), path)


# --- placement map -------------------------------------------------------------------------------------------

HOST_COLOUR, ABSENT_COLOUR = "#b0b0b0", "#ffffff"
# ColorBrewer Dark2: distinct at a glance, also for the colour-blind in its first four.
_DEVICE_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d")
_GROUP_ROLES = (("attention + KV", (Role.ATTENTION,)), ("norms", (Role.NORM,)), ("router", (Role.ROUTER,)),
                ("shared experts", (Role.SHARED_EXPERT,)), ("dense FFN", (Role.DENSE_FFN,)), ("recurrent", (Role.SSM,)))


def placement_grid(model: ModelDescription, placement: Placement, title: str = "") -> Grid:
    """Where every block's tensors live: one row per kind of tensor (each routed-expert tensor on its own row),
    one column per block, coloured by device; the KV cache is where the block's attention runs."""
    n = model.hparams.n_layer
    devices = [d for d in dict.fromkeys([*placement.layer_devices, placement.output_device,
                                         *placement.tensor_devices.values()]) if d != HOST]
    colour = {HOST: HOST_COLOUR, **{d: _DEVICE_COLOURS[i % len(_DEVICE_COLOURS)] for i, d in enumerate(devices)}}
    rows: list[tuple[str, Callable[[Tensor], bool]]] = []
    for label, roles in _GROUP_ROLES:
        if any(t.role in roles and t.loaded for t in model.tensors):
            rows.append((label, lambda t, roles=roles: t.role in roles))
    stems = dict.fromkeys(t.name.split(".")[2] for t in model.tensors if t.role is Role.ROUTED_EXPERT and t.loaded)
    rows += [(stem, lambda t, stem=stem: t.role is Role.ROUTED_EXPERT and t.name.split(".")[2] == stem)
             for stem in stems]
    by_block: dict[int, list[Tensor]] = {il: [] for il in range(n)}
    for t in model.tensors:
        if t.block is not None and t.loaded:
            by_block[t.block].append(t)
    colours, tips = [], []
    for label, match in rows:
        crow, trow = [], []
        for il in range(n):
            ts = [t for t in by_block[il] if match(t)]
            where = dict.fromkeys(placement.tensor_devices[t.name] for t in ts)
            if label == "attention + KV" and ts:
                where = dict.fromkeys([*where, placement.layer_devices[il]])
            crow.append(colour[next(iter(where))] if len(where) == 1 else "#000000" if where else ABSENT_COLOUR)
            size = sum(t.nbytes for t in ts)
            mib = f", {size / 2**20:.1f} MiB" if ts else ""
            trow.append(f"block {il} {label}: {', '.join(where) or 'none'}{mib}")
        colours.append(tuple(crow))
        tips.append(tuple(trow))
    legend = (*tuple((colour[d], d) for d in devices), (HOST_COLOUR, f"{HOST} (RAM)"), (ABSENT_COLOUR, "none"))
    return Grid(title=title or f"Placement of {model.name}",
                subtitle=f"output layer on {placement.output_device}; token embeddings in RAM",
                row_title="", col_title="block", row_labels=tuple(label for label, _ in rows),
                colours=tuple(colours), legend=legend, tips=tuple(tips), legend_title="where each tensor lives:")
