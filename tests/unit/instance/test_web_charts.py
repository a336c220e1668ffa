"""The usage page's SVG bar chart: well-formed, scaled, escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from enclave.instance.web.charts import MAX_BARS, bar_chart


def parse(svg: object) -> ET.Element:
    # Our own output, not untrusted input: the standard parser is fine here.
    return ET.fromstring(str(svg))  # noqa: S314


SVG = "{http://www.w3.org/2000/svg}"


def test_bars_are_scaled_to_the_peak_and_labelled() -> None:
    svg = parse(bar_chart([("mon", 2), ("tue", 4)], title="Requests", height=200))
    rects = svg.findall(f"{SVG}rect")
    assert len(rects) == 2
    heights = [float(r.attrib["height"]) for r in rects]
    assert heights[1] == 2 * heights[0] > 0
    texts = [t.text for t in svg.findall(f"{SVG}text")]
    assert {"2", "4", "mon", "tue"} <= set(texts)


def test_labels_are_escaped_and_bars_bounded() -> None:
    chart = str(bar_chart([("<script>x</script>", 1)], title='a"b'))
    assert "<script>" not in chart and "&lt;script&gt;" in chart
    parse(chart)  # still well-formed
    many = parse(bar_chart([(str(i), i) for i in range(200)], title="t"))
    assert len(many.findall(f"{SVG}rect")) == MAX_BARS


def test_an_empty_period_says_so() -> None:
    assert "no requests in this period" in str(bar_chart([], title="t"))
    assert "no requests in this period" in str(bar_chart([("a", 0), ("b", 0)], title="t"))
    assert "no requests in this period" not in str(bar_chart([("a", 1)], title="t"))
