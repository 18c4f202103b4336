"""notebook.repeated_displays, the check the root conftest.py applies to every notebook cell that
`make test` executes (issue 11: figures and tables were displayed twice)."""
from c2gr_core.interface.notebook import repeated_displays


def _display(mime, payload, kind="display_data"):
    return {"output_type": kind, "data": {mime: payload, "text/plain": "<object>"}, "metadata": {}}


def test_each_thing_shown_once_passes():
    cells = [[_display("image/png", "AAA"), {"output_type": "stream", "name": "stdout", "text": "hi\n"}],
             [_display("text/html", "<table>1</table>"), _display("image/png", "BBB")],
             [{"output_type": "execute_result", "data": {"text/plain": "{'a': 1}"}, "metadata": {}}]]
    assert repeated_displays(cells) == []


def test_a_table_or_figure_shown_again_is_reported():
    table = _display("text/html", "<table>1</table>")
    assert repeated_displays([[table, _display("text/html", "<table>1</table>", "execute_result")]]) == [
        "code cell 0 displays the same text/html as code cell 0"]
    plotly = {"data": [{"type": "heatmap", "z": [[1]]}], "layout": {}}
    problems = repeated_displays([[_display("application/vnd.plotly.v1+json", plotly)], [],
                                  [_display("application/vnd.plotly.v1+json", dict(plotly))]])
    assert problems == ["code cell 2 displays the same application/vnd.plotly.v1+json as code cell 0"]


def test_a_figure_printed_as_its_repr_is_reported():
    stray = {"output_type": "execute_result", "data": {"text/plain": "<Figure size 1120x600 with 4 Axes>"},
             "metadata": {}, "execution_count": 3}
    (problem,) = repeated_displays([[_display("image/png", "AAA"), stray]])
    assert "<Figure size 1120x600" in problem and "code cell 0" in problem
