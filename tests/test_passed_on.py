"""Answers written on as they came (lake.passed_on): the same row as encoding it, or encoded."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from harvester.errors import LakeError
from harvester.lake import encoded, passed_on

GRAPH = Path(__file__).parent / "fixtures" / "peloton" / "performance_graph_rowing.json"
EXTRA = {"workout_id": "a" * 32, "user_id": "b" * 32, "created_at": 1_700_000_000,
         "_harvested_at": "2026-12-01T00:00:00Z"}


def test_a_real_graph_is_spliced_and_reads_back_as_the_encoded_row() -> None:
    """The fixture graph, sent compact as the API sends it, with the added keys spliced in:
    one line, made from the body (not re-encoded), that parses to exactly the row encoding
    would have written."""
    value = orjson.loads(GRAPH.read_bytes())  # the file is pretty-printed for reading
    body = orjson.dumps(value)
    line = passed_on("performance_graphs", value, body, EXTRA)
    expected = encoded("performance_graphs", {**value, **EXTRA})
    assert (line.key, line.part) == (expected.key, expected.part) == ("a" * 32, "2023-11-14")
    assert line.line.count(b"\n") == 1 and line.line.endswith(b"\n")
    assert orjson.loads(line.line) == orjson.loads(expected.line)
    assert line.line.startswith(body[:-1])


def test_the_line_keeps_the_answers_own_text() -> None:
    """Spliced, not re-encoded: numbers and escapes stay as the server wrote them."""
    body = b'{"duration":1e2,"title":"Caf\\u00e9"}'
    line = passed_on("performance_graphs", orjson.loads(body), body, EXTRA)
    assert line.line.startswith(b'{"duration":1e2,"title":"Caf\\u00e9",')
    assert orjson.loads(line.line) == {"duration": 100.0, "title": "Caf\u00e9", **EXTRA}


@pytest.mark.parametrize("body", [
    b'{\n  "seconds_since_pedaling_start": [0, 5],\n  "duration": 10\n}',  # pretty-printed
    b'{"user_id": "someone else", "duration": 10}',  # holds a key the row sets
    b"{}",  # nothing to splice after
    b'\xef\xbb\xbf{"duration": 10}',  # a byte-order mark before the object
    b'  {"duration": 10}  ',  # spaces around it: still one line
])
def test_answers_that_cannot_be_spliced_are_encoded(body: bytes) -> None:
    """Whatever the answer's text looks like, the line is one line that parses to the row,
    with the row's own values for the keys it adds."""
    value = orjson.loads(body.removeprefix(b"\xef\xbb\xbf"))
    line = passed_on("performance_graphs", value, body, EXTRA)
    assert line.line.count(b"\n") == 1 and line.line.endswith(b"\n")
    assert orjson.loads(line.line) == {**value, **EXTRA}


def test_a_row_the_lake_cannot_hold_is_refused_as_encoding_refuses_it() -> None:
    """No created_at to partition by: LakeError, as encoded() raises."""
    body = b'{"duration": 10}'
    with pytest.raises(LakeError):
        passed_on("performance_graphs", orjson.loads(body), body, {"workout_id": "a" * 32})
