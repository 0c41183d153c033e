"""Small SVG charts rendered on the server: no script, no inline style (the CSP forbids both).

Sizes and positions are SVG attributes, colours come from classes in the bundled stylesheet.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

_BAR_HEIGHT = 18
_BAR_GAP = 6
_LABEL_WIDTH = 110
_VALUE_WIDTH = 80


def _number(value: float) -> str:
    if float(value).is_integer():
        return f"{value:.0f}"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def bar_chart(items: Sequence[tuple[str, float]], *, unit: str, width: int = 520, title: str) -> Markup:
    """Horizontal bars, one per (label, value), scaled to the largest value."""
    if not items:
        return Markup("")
    top = max(value for _, value in items) or 1.0
    span = width - _LABEL_WIDTH - _VALUE_WIDTH
    height = len(items) * (_BAR_HEIGHT + _BAR_GAP)
    parts = [
        f'<svg class="chart bars" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for index, (label, value) in enumerate(items):
        y = index * (_BAR_HEIGHT + _BAR_GAP)
        bar = max(1.0, span * max(value, 0.0) / top)
        text_y = y + _BAR_HEIGHT - 5
        parts.append(
            f'<text class="label" x="0" y="{text_y}">{escape(label)}</text>'
            f'<rect class="bar" x="{_LABEL_WIDTH}" y="{y}" width="{bar:.1f}" height="{_BAR_HEIGHT}">'
            f"<title>{escape(label)}: {_number(value)} {escape(unit)}</title></rect>"
            f'<text class="value" x="{_LABEL_WIDTH + bar + 6:.1f}" y="{text_y}">'
            f"{_number(value)} {escape(unit)}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 (every label is escaped above)


def line_chart(
    series: Sequence[tuple[str, Sequence[tuple[str, float]]]],
    *,
    y_max: float,
    y_label: str,
    title: str,
    width: int = 640,
    height: int = 240,
) -> Markup:
    """One polyline per named series over shared x labels (periods), y from 0 to ``y_max``."""
    labels = sorted({x for _, points in series for x, _ in points})
    if not labels:
        return Markup("")
    left, right, top, bottom = 48, 16, 16, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    step = plot_w / max(1, len(labels) - 1)
    position = {label: left + (i * step if len(labels) > 1 else plot_w / 2) for i, label in enumerate(labels)}

    def y_of(value: float) -> float:
        return top + plot_h * (1 - min(max(value, 0.0), y_max) / y_max)

    parts = [
        f'<svg class="chart lines" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}"/>',
        f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}"/>',
    ]
    for tick in (0.0, y_max / 2, y_max):
        parts.append(
            f'<text class="tick" x="{left - 6}" y="{y_of(tick) + 4:.1f}" text-anchor="end">'
            f"{_number(tick)}</text>"
        )
    parts.append(f'<text class="tick" x="4" y="{top + 10}">{escape(y_label)}</text>')
    shown = labels if len(labels) <= 8 else labels[:: -(-len(labels) // 8)]
    for label in shown:
        parts.append(
            f'<text class="tick" x="{position[label]:.1f}" y="{height - 20}" '
            f'text-anchor="middle">{escape(label)}</text>'
        )
    for number, (name, points) in enumerate(series):
        ordered = sorted(points)
        coords = " ".join(f"{position[x]:.1f},{y_of(v):.1f}" for x, v in ordered)
        css = f"series s{number % 6}"
        parts.append(f'<polyline class="{css}" points="{coords}"><title>{escape(name)}</title></polyline>')
        for x, v in ordered:
            parts.append(
                f'<circle class="{css}" cx="{position[x]:.1f}" cy="{y_of(v):.1f}" r="3">'
                f"<title>{escape(name)} {escape(x)}: {_number(v)}</title></circle>"
            )
        parts.append(
            f'<text class="legend {css}" x="{left + 8 + 150 * number}" y="{height - 4}">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 (every label is escaped above)
