"""Property tests: any records the schema allows survive CSV -> validated Arrow unchanged."""

import csv

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bioscan5m_hf import schema
from bioscan5m_hf.convert.release import CSV_NULL_VALUES, load_metadata

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=24)
value_text = text.filter(lambda s: s not in CSV_NULL_VALUES)  # those read as missing, as pandas does
finite = st.floats(allow_nan=False, allow_infinity=False)
# any key the schema allows, but one such as "NA" or "null" would be read as missing (as pandas reads it)
pid = st.from_regex(r"[A-Za-z0-9_\-]{1,16}", fullmatch=True).filter(
    lambda s: s not in CSV_NULL_VALUES and schema.PROCESSID_PATTERN.match(s))


@st.composite
def records(draw):
    n = draw(st.integers(1, 6))
    pids = draw(st.lists(pid, min_size=n, max_size=n, unique=True))
    out = []
    for p in pids:
        split = draw(st.sampled_from(schema.SPLITS))
        rec = {}
        for col in schema.COLUMNS:
            if col.name == "processid":
                value = p
            elif col.name == "split":
                value = split
            elif col.name == "chunk":
                value = schema.chunk_for(p, split)
            elif col.name == "inferred_ranks":
                value = draw(st.integers(0, 255))
            elif col.name == "index_bioscan_1M_insect":
                value = draw(st.none() | st.integers(-(2**53), 2**53))
            elif col.type == schema.arrow_schema().field("coord-lat").type:
                value = draw(st.none() | finite)
            else:
                value = draw(value_text) if not col.nullable else draw(st.none() | value_text)
            rec[col.name] = value
        out.append(rec)
    return out


def cell(name, value):
    if value is None:
        return ""
    if name == "index_bioscan_1M_insect":
        return f"{float(value)!r}" if abs(value) < 2**53 else str(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=records())
def test_csv_round_trip(tmp_path, rows):
    path = tmp_path / "meta.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        # RFC 4180 line ends, so that the writer quotes a value holding a bare carriage return too.
        writer = csv.writer(f, lineterminator="\r\n")
        writer.writerow(schema.COLUMN_NAMES)
        for r in rows:
            writer.writerow([cell(k, r[k]) for k in schema.COLUMN_NAMES])
    table = load_metadata(path, tmp_path / "meta.arrow")
    back = table.to_pylist()
    for r in rows:  # an empty string is a missing value in the CSV, as for the official loader
        for col in schema.COLUMNS:
            if r[col.name] == "" and col.nullable:
                r[col.name] = None
    assert back == rows
