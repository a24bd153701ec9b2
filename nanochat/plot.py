"""
Loss curves drawn as a standalone SVG (no plotting dependency): open it in any browser.

    from nanochat.plot import plot_training_log
    plot_training_log("base_checkpoints/d4/log.jsonl", "base_checkpoints/d4/loss.svg")

The log is the JSONL a training script appends to: one record per step ({"step", "smooth_loss",
...}) and one per evaluation ({"step", "val_bpb", ...}). Each series gets its own panel, since the
units differ (nats per token vs bits per byte).
"""

from xml.sax.saxutils import escape

from nanochat.common import atomic_write, iter_jsonl

PANEL_W, PANEL_H, MARGIN = 420, 260, 48
MAX_DOTS = 40  # series with at most this many points get a dot on each
SERIES = [("smooth_loss", "train loss (smoothed, nats/token)", "#1f77b4"),
          ("val_bpb", "validation bits per byte", "#d62728"),
          ("val_loss", "validation loss (nats/token)", "#d62728"),
          ("reward", "mean reward of the samples", "#2ca02c")]


def read_series(log_path):
    """{name: [(step, value), ...]} for the SERIES found in a JSONL log (in file order)."""
    series = {name: [] for name, _, _ in SERIES}
    for _, record in iter_jsonl(log_path):
        for name in series:
            if record.get(name) is not None and "step" in record:
                series[name].append((record["step"], float(record[name])))
    return series


def _panel(points, title, color, x0):
    """The SVG elements of one panel whose left edge is at x0."""
    steps, values = [s for s, _ in points], [v for _, v in points]
    s_lo, s_hi = min(steps), max(steps)
    v_lo, v_hi = min(values), max(values)
    s_span, v_span = (s_hi - s_lo) or 1, (v_hi - v_lo) or 1
    left, right, top, bottom = x0 + MARGIN, x0 + PANEL_W - 12, 30, PANEL_H - 30

    def xy(step, value):  # larger values higher up: SVG's y axis points down; a single step or a
        # flat series sits in the middle of the panel, not on its edge
        fx = (step - s_lo) / s_span if s_hi > s_lo else 0.5
        fy = (value - v_lo) / v_span if v_hi > v_lo else 0.5
        return left + fx * (right - left), bottom - fy * (bottom - top)

    placed = [xy(s, v) for s, v in points]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in placed)
    # few points (evaluations, often one in a short run): a dot on each, or a lone one is invisible
    dots = [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in placed]
    dots = dots if len(dots) <= MAX_DOTS else []
    label = 'font-family="sans-serif" font-size="11"'
    return [
        f'<text x="{x0 + PANEL_W / 2}" y="18" text-anchor="middle" font-family="sans-serif" '
        f'font-size="13">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" stroke="#999"/>',
        f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>', *dots,
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end" {label}>{v_hi:.3f}</text>',
        f'<text x="{left - 4}" y="{bottom}" text-anchor="end" {label}>{v_lo:.3f}</text>',
        f'<text x="{left}" y="{bottom + 14}" {label}>step {s_lo}</text>',
        f'<text x="{right}" y="{bottom + 14}" text-anchor="end" {label}>step {s_hi}</text>',
    ]


def plot_training_log(log_path, svg_path):
    """Draw every non-empty series of the log into svg_path (written atomically). Returns the
    names of the series drawn; draws nothing and returns [] when the log has none."""
    series = read_series(log_path)
    drawn = [(name, title, color) for name, title, color in SERIES if series[name]]
    if not drawn:
        return []
    width = PANEL_W * len(drawn)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{PANEL_H}" '
             f'viewBox="0 0 {width} {PANEL_H}">', f'<rect width="{width}" height="{PANEL_H}" fill="white"/>']
    for i, (name, title, color) in enumerate(drawn):
        parts += _panel(series[name], title, color, i * PANEL_W)
    parts.append("</svg>")
    atomic_write(svg_path, lambda f: f.write("\n".join(parts) + "\n"))
    return [name for name, _, _ in drawn]
