"""Server-rendered SVG bar charts: no script, nothing loaded, safe to inline in a page.

Labels are escaped; numbers are formatted here, so the SVG carries no text from elsewhere
unescaped. The CSP of the pages (``img-src 'self' data:``, inline SVG is markup) allows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

BAR_COLOUR = "#5b3fc4"
AXIS_COLOUR = "#888"
MAX_BARS = 60  # past this, bars are too thin to read: the caller sums them first


def bar_chart(
    bars: Sequence[tuple[str, float]],
    *,
    title: str,
    width: int = 720,
    height: int = 200,
) -> Markup:
    """A vertical bar chart of ``(label, value)`` pairs, labelled below and valued above."""
    shown = list(bars)[-MAX_BARS:]
    top, bottom, left = 24, 36, 8
    plot_h = height - top - bottom
    plot_w = width - 2 * left
    peak = max((value for _, value in shown), default=0) or 1
    slot = plot_w / max(len(shown), 1)
    bar_w = min(48.0, max(2.0, slot * 0.7))  # thin enough to read as a bar
    parts = [
        f'<svg class="chart" role="img" aria-label="{escape(title)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - left}" y2="{top + plot_h}" '
        f'stroke="{AXIS_COLOUR}"/>',
    ]
    for index, (label, value) in enumerate(shown):
        bar_h = plot_h * (value / peak)
        x = left + index * slot + (slot - bar_w) / 2
        y = top + plot_h - bar_h
        number = f"{value:g}" if isinstance(value, int) or value == int(value) else f"{value:.1f}"
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{bar_h:.1f}" '
            f'fill="{BAR_COLOUR}"><title>{escape(label)}: {number}</title></rect>'
        )
        centre = x + bar_w / 2
        parts.append(
            f'<text x="{centre:.1f}" y="{y - 4:.1f}" font-size="11" text-anchor="middle">'
            f"{number}</text>"
        )
        parts.append(
            f'<text x="{centre:.1f}" y="{top + plot_h + 14:.1f}" font-size="10" '
            f'text-anchor="middle">{escape(label[:16])}</text>'
        )
    if not any(value for _, value in shown):
        parts.append(
            f'<text x="{width / 2:.0f}" y="{top + plot_h / 2:.0f}" text-anchor="middle" '
            'font-size="12">no requests in this period</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every piece of text above is escaped
