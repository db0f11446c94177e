"""The bakeoff report's latency chart as a self-contained SVG file: grouped
bars per latency bucket, one colour per mode, a legend, axes with counts.
An SVG renders in any browser, Markdown viewer or image viewer, which a
Mermaid block does not (and Mermaid's xychart has no legend)."""

from __future__ import annotations

from xml.sax.saxutils import escape

# Colours distinguishable for common colour-vision deficiencies (Okabe-Ito).
SERIES_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7")
_W, _H = 760, 360
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 16, 48, 64


def _nice_max(top: int) -> int:
    """An axis maximum >= top from the 1-2-5 series, so ticks are round."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if step * m >= top:
                return step * m
        step *= 10


def latency_svg(
    title: str,
    labels: list[str],
    series: dict[str, list[int]],
    x_title: str = "latency (ms)",
    y_title: str = "attempts",
) -> str:
    """An SVG document: `series` (name -> one count per label) as grouped bars."""
    names = list(series)
    top = _nice_max(max([1, *(c for counts in series.values() for c in counts)]))
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    group_w = plot_w / max(1, len(labels))
    bar_w = group_w * 0.8 / max(1, len(names))
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" '
        'font-family="sans-serif" font-size="12">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{_W}" height="{_H}" fill="#ffffff"/>',
        f'<text x="{_W / 2:.0f}" y="20" text-anchor="middle" font-size="15" font-weight="bold">{escape(title)}</text>',
    ]
    for i in range(5):  # horizontal grid and y ticks
        value = top * i // 4
        y = _TOP + plot_h - plot_h * value / top
        out.append(
            f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{_W - _RIGHT}" y2="{y:.1f}" stroke="#dddddd"/>'
        )
        out.append(f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{value}</text>')
    for g, label in enumerate(labels):
        x0 = _LEFT + g * group_w + group_w * 0.1
        for s, name in enumerate(names):
            count = series[name][g]
            h = plot_h * count / top
            x = x0 + s * bar_w
            colour = SERIES_COLOURS[s % len(SERIES_COLOURS)]
            out.append(
                f'<rect x="{x:.1f}" y="{_TOP + plot_h - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'fill="{colour}"><title>{escape(name)} {escape(label)} ms: {count}</title></rect>'
            )
            if count:
                out.append(
                    f'<text x="{x + bar_w / 2:.1f}" y="{_TOP + plot_h - h - 3:.1f}" text-anchor="middle" '
                    f'font-size="10">{count}</text>'
                )
        out.append(
            f'<text x="{_LEFT + (g + 0.5) * group_w:.1f}" y="{_TOP + plot_h + 16}" '
            f'text-anchor="middle">{escape(label)}</text>'
        )
    out += [
        f'<line x1="{_LEFT}" y1="{_TOP + plot_h}" x2="{_W - _RIGHT}" y2="{_TOP + plot_h}" stroke="#333333"/>',
        f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_TOP + plot_h}" stroke="#333333"/>',
        f'<text x="{_LEFT + plot_w / 2:.0f}" y="{_H - 28}" text-anchor="middle">{escape(x_title)}</text>',
        f'<text x="14" y="{_TOP + plot_h / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {_TOP + plot_h / 2:.0f})">{escape(y_title)}</text>',
        f'<g class="legend" transform="translate({_LEFT}, {_H - 14})">',
    ]
    for s, name in enumerate(names):
        x = s * 110
        out.append(
            f'<rect x="{x}" y="-10" width="12" height="12" fill="{SERIES_COLOURS[s % len(SERIES_COLOURS)]}"/>'
        )
        out.append(f'<text x="{x + 17}" y="0">{escape(name)}</text>')
    out += ["</g>", "</svg>"]
    return "\n".join(out) + "\n"
