"""Shards as input splits (lqs.splits) and reading them (lqs.corpus.iter_records): a record is
never lost or read twice, whatever the cuts (brute force: split-and-concatenate against one pass)."""

from __future__ import annotations

import gzip
import json
import os
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lqs import splits
from lqs.corpus import iter_records
from lqs.splits import (
    FILE_BITS,
    POSITION_MASK,
    Split,
    corpus_doc_ids,
    corpus_file_indices,
    dumps_splits,
    parse_size,
    plan_shards,
    row_groups,
    shard_doc_id,
)

BOM = b"\xef\xbb\xbf"

# A JSONL file that trips a reader cut at any byte: a BOM, \n and \r\n line ends, blank and
# whitespace-only lines, multi-byte UTF-8 (2, 3 and 4 bytes), an invalid line, an empty text,
# a duplicate key, and a last line without a line end.
TRICKY = (BOM + "\n".join([
    '{"text": "héllo wörld"}\r',
    '',
    '   ',
    '{"text": "日本語のテキスト"}',
    '{"text": "emoji 😀 here"}\r',
    '\t \r',
    'not json {',
    '{"text": ""}',
    '\r',
    '{"text": "a", "text": "b"}',
    '{"text": "ß\\u00e9 ok"}\r',
    '{"text": "last line"}',
]).encode("utf-8"))

FRAGMENTS = ["alpha", "βeta", "γάμμα", "日本", "😀", "plain words here", "x" * 40, "tab\\there"]


def random_jsonl(rng: random.Random, lines: int, blanks: bool = True) -> bytes:
    """Random JSONL: mixed \\n and \\r\\n, multi-byte text, (with `blanks`) blank lines and bad
    lines, a BOM, and a last line without a line end."""
    out = [BOM]
    for i in range(lines):
        if blanks and rng.random() < 0.08:
            body = rng.choice(["", "  ", "\t", "\r"])[:1 if rng.random() < 0.5 else None]
        elif blanks and rng.random() < 0.04:
            body = '{"text": broken'
        else:
            text = " ".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 6)))
            body = json.dumps({"text": f"{i} {text}", "i": i}, ensure_ascii=rng.random() < 0.3)
        end = "" if i == lines - 1 else rng.choice(["\n", "\r\n"])
        out.append((body + end).encode("utf-8"))
    return b"".join(out)


def write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def write_parquet(path, group_rows: list[int], text_len: int = 20) -> str:
    """A Parquet file with one row group per entry of `group_rows` (uneven sizes)."""
    rng, row = random.Random(len(group_rows)), 0
    schema = pa.schema([("text", pa.string()), ("n", pa.int64())])
    with pq.ParquetWriter(str(path), schema, compression="none") as writer:
        for rows in group_rows:
            texts = [f"row {row + i} " + "".join(rng.choices("abcdé日😀 ", k=text_len)) for i in range(rows)]
            writer.write_table(pa.table({"text": texts, "n": list(range(row, row + rows))}, schema=schema))
            row += rows
    assert pq.ParquetFile(str(path)).metadata.num_row_groups == len(group_rows)
    return str(path)


def view(record) -> tuple:
    """What a record is, for comparing two reads of it."""
    return (record.doc_id, record.path, record.line, record.raw, record.eol, record.error, record.fingerprint,
            record.text, json.dumps(record.fields, sort_keys=True, default=str))


def read(splits) -> list[tuple]:
    """The records of `splits`, read in one iter_records call."""
    return [view(r) for r in iter_records(splits, require_records=False)]


def byte_pieces(path: str, cuts) -> list[Split]:
    """`path` cut at the byte offsets `cuts` (sorted; repeats make empty pieces), the last to its end."""
    bounds = [0, *sorted(cuts), None]
    return [Split(path, a, b) for a, b in zip(bounds, bounds[1:])]


def line_starts(data: bytes) -> list[tuple[int, int, bytes]]:
    """(offset, 1-based line, bytes) of each line of `data`, computed independently of lqs."""
    out, offset = [], 0
    for number, line in enumerate(data.split(b"\n"), start=1):
        if offset < len(data) or line:
            out.append((offset, number, line))
        offset += len(line) + 1
    return out


def records_of(data: bytes) -> list[tuple[int, int]]:
    """(position, line) of each record (non-blank line) of JSONL `data`, independently of lqs."""
    return [(offset, number) for offset, number, line in line_starts(data)
            if (line[len(BOM):] if offset == 0 and line.startswith(BOM) else line).strip()]


def read_shards(shards) -> list[tuple]:
    """Every record of `shards` read shard by shard, its doc id made the corpus's."""
    indices = corpus_file_indices([shard.files for shard in shards])
    out = []
    for shard, file_indices in zip(shards, indices):
        records = list(iter_records(shard.splits, require_records=False))
        ids = corpus_doc_ids(np.array([r.doc_id for r in records], dtype=np.int64), file_indices)
        out.extend((int(i), *view(r)[1:]) for i, r in zip(ids, records))
    return out


@pytest.fixture
def tricky(tmp_path) -> str:
    """The TRICKY JSONL file."""
    return write(tmp_path / "tricky.jsonl", TRICKY)


@pytest.fixture
def corpus(tmp_path) -> list[str]:
    """A mixed corpus: small and large JSONL, gzip, Parquet with uneven row groups."""
    rng = random.Random(7)
    return [
        write(tmp_path / "a-small.jsonl", TRICKY),
        write(tmp_path / "b-large.jsonl", random_jsonl(rng, 300)),
        write(tmp_path / "c.jsonl.gz", gzip.compress(random_jsonl(rng, 120))),
        write_parquet(tmp_path / "d.parquet", [40, 1, 25, 3, 1, 60, 12], text_len=60),
        write(tmp_path / "e-small.jsonl", random_jsonl(rng, 5)),
        write(tmp_path / "f-large.jsonl", random_jsonl(rng, 150)),
    ]


# ----------------------------------------------------------------------------------------------
# JSONL byte ranges


def test_one_pass_reads_every_line_once(tricky):
    """One pass over the tricky JSONL file yields its non-blank lines at their offsets and lines."""
    records = list(iter_records([tricky]))
    assert [(r.doc_id, r.line) for r in records] == records_of(TRICKY)
    assert records[0].raw == '{"text": "héllo wörld"}' and records[0].eol == "\r\n"  # BOM dropped
    assert records[-1].raw == '{"text": "last line"}' and records[-1].eol == ""
    assert [r.error is not None for r in records] == [False, False, False, True, True, True, False, False]


def test_jsonl_every_cut(tricky):
    """Two pieces cut at any byte (line starts, after \\n, between \\r and \\n, in a character) read as one pass."""
    whole = read([tricky])
    for cut in range(len(TRICKY) + 2):
        assert read(byte_pieces(tricky, [cut])) == whole, f"cut at byte {cut}"
    # the file holds each kind of position the cuts must survive
    assert TRICKY.index(b"\r\n") and TRICKY.index("日".encode()) and TRICKY.index("😀".encode())


def test_jsonl_every_pair_of_cuts(tmp_path):
    """Three pieces cut at any two bytes (empty pieces included) of a small tricky file read as one pass."""
    data = BOM + '{"text": "é"}\r\n\n \r\n{"text": "日b"}\n{bad\r\n{"text": "😀"}'.encode()
    path = write(tmp_path / "small.jsonl", data)
    whole = read([path])
    assert len(whole) == 4
    for a in range(len(data) + 1):
        for b in range(a, len(data) + 1):
            assert read(byte_pieces(path, [a, b])) == whole, f"cuts at bytes {a} and {b}"


def test_jsonl_random_cuts(tmp_path):
    """Random sets of cuts (repeats, 0 and the end included) of a larger random JSONL file read as one pass."""
    rng = random.Random(1)
    data = random_jsonl(rng, 200)
    path = write(tmp_path / "large.jsonl", data)
    whole = read([path])
    assert [(r[0], r[2]) for r in whole] == records_of(data)  # (doc_id, line), computed independently
    starts = [offset for offset, _, _ in line_starts(data)]
    for trial in range(100):
        cuts = [rng.randint(0, len(data)) for _ in range(rng.randint(1, 25))]
        cuts += rng.sample(starts, 3) + [s + 1 for s in rng.sample(starts, 2)]  # at and just after line starts
        cuts += [0] * (trial % 2) + [len(data)] * (trial % 3 == 0)
        assert read(byte_pieces(path, cuts)) == whole, f"cuts at bytes {sorted(cuts)}"


def test_split_mid_file_knows_its_lines(tricky):
    """A split that starts at any line start reports each record's line in the file, as one pass does."""
    expected = dict(records_of(TRICKY))
    for offset, _, _ in line_starts(TRICKY):
        for record in iter_records([Split(tricky, offset)], require_records=False):
            assert record.line == expected[record.doc_id], f"split from byte {offset}"


# ----------------------------------------------------------------------------------------------
# Parquet row groups


def test_parquet_row_group_ranges(tmp_path):
    """Pieces of a Parquet file of uneven row groups (1-row ones too), cut between any groups, read as one pass."""
    groups = [5, 1, 17, 3, 1, 9]
    path = write_parquet(tmp_path / "rows.parquet", groups)
    whole = read([path])
    total = sum(groups)
    assert [r[0] for r in whole] == list(range(total))  # doc id: the row index
    assert [r[2] for r in whole] == list(range(1, total + 1))  # line: the row number
    assert [json.loads(r[8])["n"] for r in whole] == list(range(total))
    info = row_groups(path)
    assert info.rows == tuple(groups) and list(info.starts) == sorted(set(info.starts)) and min(info.sizes) > 0
    for mask in range(1 << (len(groups) + 1)):  # every set of cuts among 0..6, repeats of 0 and 6 too
        cuts = [g for g in range(len(groups) + 1) if mask >> g & 1]
        pieces = [Split(path, a, b) for a, b in zip([0, *cuts], [*cuts, None])]
        assert read(pieces) == whole, f"cuts at row groups {cuts}"


def test_a_parquet_piece_holds_twenty_footers(tmp_path, monkeypatch):
    """Every job reads the whole footer of a Parquet file it reads part of, and row groups' text
    statistics make footers large: a cut piece holds at least FOOTER_SHARE times the footer's
    bytes, so the footers add at most 1/FOOTER_SHARE to what the shards read, at any shard count."""
    path = write_parquet(tmp_path / "wide.parquet", [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3] * 4, text_len=400)
    info, whole, size = row_groups(path), read([path]), os.path.getsize(path)
    assert info.footer == pq.ParquetFile(path).metadata.serialized_size + 8 and info.footer > 10 * min(info.sizes)
    cut_more = False
    for plan in ([{"num_shards": n} for n in (2, 5, 16, 64, 1000)]
                 + [{"shard_size": s} for s in (1, size // 40, size // 7, size // 2)]):
        pieces = [x for shard in plan_shards([path], [size], **plan) for x in shard.splits]
        assert read(pieces) == whole, plan
        if len(pieces) > 1:
            assert all(sum(info.sizes[x.start:x.stop]) >= splits.FOOTER_SHARE * info.footer for x in pieces), plan
        monkeypatch.setattr(splits, "FOOTER_SHARE", 0)
        cut_more |= len([x for shard in plan_shards([path], [size], **plan) for x in shard.splits]) > len(pieces)
        monkeypatch.undo()
    assert cut_more  # the rule joined pieces that the row groups alone would have cut


# ----------------------------------------------------------------------------------------------
# gzip


def test_gzip_positions_and_never_cut(tmp_path):
    """A .jsonl.gz file's positions are offsets in the decompressed stream, and planning never cuts it."""
    data = random_jsonl(random.Random(3), 80)
    path = write(tmp_path / "data.jsonl.gz", gzip.compress(data))
    records = list(iter_records([path]))
    assert [(r.doc_id, r.line) for r in records] == records_of(data)
    assert [r.raw for r in records] == [r.raw for r in iter_records([write(tmp_path / "plain.jsonl", data)])]
    size = os.path.getsize(path)
    before = write(tmp_path / "before.jsonl", random_jsonl(random.Random(4), 30))
    after = write(tmp_path / "after.jsonl", random_jsonl(random.Random(5), 30))
    for files in ([path], [before, path, after]):
        sizes = [os.path.getsize(f) for f in files]
        plans = [plan_shards(files, sizes, num_shards=n) for n in range(1, 9)]
        plans += [plan_shards(files, sizes, shard_size=s) for s in (1, 10, size // 3, size)]
        for shards in plans:
            gz = [split for shard in shards for split in shard.splits if split.path == path]
            assert gz == [Split(path)]


# ----------------------------------------------------------------------------------------------
# planning: num_shards N


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 9, 12, 16, 24, 40])
def test_num_shards_reads_every_record_once(corpus, n, monkeypatch):
    """N shards of a mixed corpus: at most N, non-empty, named 0..N-1 in order, and together one pass's records."""
    monkeypatch.setattr(splits, "FOOTER_SHARE", 0)  # cut at any row group (the footer's rule: its own test)
    sizes = [os.path.getsize(f) for f in corpus]
    shards = plan_shards(corpus, sizes, num_shards=n)
    assert 1 <= len(shards) <= n
    assert all(shard.splits for shard in shards)
    keys = [int(shard.key) for shard in shards]
    assert keys == sorted(set(keys)) and set(keys) <= set(range(n))
    assert read_shards(shards) == read(corpus)
    assert [split for shard in shards for split in shard.splits if split.path == corpus[2]] == [Split(corpus[2])]
    if n >= 9:  # the Parquet file and the large JSONL file are cut
        assert sum(split.path == corpus[1] for shard in shards for split in shard.splits) > 1
        assert sum(split.path == corpus[3] for shard in shards for split in shard.splits) > 1


@pytest.mark.parametrize("n", [2, 3, 4, 5, 7, 8, 10, 16])
def test_num_shards_balanced(tmp_path, n):
    """N shards of one large JSONL file: all N planned, each of total/N bytes (read: within a line)."""
    data = random_jsonl(random.Random(n), 600, blanks=False)
    path = write(tmp_path / "one.jsonl", data)
    shards = plan_shards([path], [len(data)], num_shards=n)
    assert [shard.key for shard in shards] == [str(k) for k in range(n)]
    assert all(abs(shard.size - len(data) / n) <= 1 for shard in shards), [shard.size for shard in shards]
    longest = max(len(line) + 1 for _, _, line in line_starts(data))
    for shard in shards:
        read_bytes = sum(len(r.raw.encode()) + len(r.eol) for r in iter_records(shard.splits))
        assert abs(read_bytes - len(data) / n) <= longest + len(BOM), (shard.key, read_bytes, len(data) / n)


# ----------------------------------------------------------------------------------------------
# planning: per_file


def test_per_file(corpus):
    """per_file: one whole split per file, named by a hash of the file alone (the same in any other corpus)."""
    sizes = [os.path.getsize(f) for f in corpus]
    shards = plan_shards(corpus, sizes, num_shards="per_file")
    assert [(shard.splits, shard.size) for shard in shards] == [((Split(f),), s) for f, s in zip(corpus, sizes)]
    keys = {shard.splits[0].path: shard.key for shard in shards}
    assert len(set(keys.values())) == len(corpus)
    others = [corpus[4], corpus[0], "/elsewhere/new.jsonl", corpus[2]]
    for shard in plan_shards(others, [5, 999, 3, 1], num_shards="per_file"):
        if shard.splits[0].path in keys:
            assert shard.key == keys[shard.splits[0].path]
    assert read_shards(shards) == read(corpus)


# ----------------------------------------------------------------------------------------------
# planning: shard_size


@pytest.mark.parametrize("shard_size", [600, 2000, 5000, 100_000])
def test_shard_size_reads_every_record_once(corpus, shard_size):
    """shard_size: every record read once, a JSONL file larger than the size cut into pieces of at most the size."""
    sizes = [os.path.getsize(f) for f in corpus]
    shards = plan_shards(corpus, sizes, shard_size=shard_size)
    assert read_shards(shards) == read(corpus)
    assert len({shard.key for shard in shards}) == len(shards)
    for path, size in zip(corpus, sizes):
        splits = [split for shard in shards for split in shard.splits if split.path == path]
        if path.endswith(".jsonl"):
            stops = [size if s.stop is None else s.stop for s in splits]
            assert all(stop - s.start <= shard_size for s, stop in zip(splits, stops))
            assert len(splits) == (1 if size <= shard_size else -(-size // shard_size))
        elif not path.endswith(".parquet"):
            assert splits == [Split(path)]


def _changed(before, after, ignore: str | None = None) -> tuple[int, int]:
    """(shards gone, shards new) between two plans, a shard being its key and splits; `ignore`: not
    counting the shards that hold that file."""
    old, new = ({(s.key, s.splits) for s in plan if ignore not in s.files} for plan in (before, after))
    return len(old - new), len(new - old)


def test_shard_size_is_incremental():
    """shard_size: inserting, removing or resizing one small file changes at most 2 shards (key and splits)."""
    failures = []
    for seed in range(40):
        rng = random.Random(seed)
        files = [f"data/part-{i:05d}.jsonl" for i in range(200)]
        sizes = [int(rng.lognormvariate(8, 1)) + 1 for _ in files]
        target = sum(sizes) // 20
        before = plan_shards(files, sizes, shard_size=target)
        assert 10 <= len(before) <= 40, (seed, len(before))
        at, one = rng.randrange(len(files) + 1), rng.randrange(len(files))  # insert before files[at]; change files[one]
        added = f"data/part-{at:05d}-new.jsonl" if at < len(files) else "data/zz.jsonl"
        cases = {
            f"insert before {at}": (files[:at] + [added] + files[at:],
                                    sizes[:at] + [int(rng.lognormvariate(8, 1)) + 1] + sizes[at:]),
            f"remove {one}": (files[:one] + files[one + 1:], sizes[:one] + sizes[one + 1:]),
            f"resize {one}": (files, sizes[:one] + [int(rng.lognormvariate(8, 1)) + 1] + sizes[one + 1:]),
        }
        for name, (changed_files, changed_sizes) in cases.items():
            gone, new = _changed(before, plan_shards(changed_files, changed_sizes, shard_size=target))
            if gone > 2 or new > 2:
                failures.append(f"seed {seed}, {name}: {gone} shards gone, {new} new")
        # grown past the shard size, the file is cut into pieces: only the shards without it count
        grown = sizes[:one] + [rng.randint(target + 1, 3 * target)] + sizes[one + 1:]
        gone, new = _changed(before, plan_shards(files, grown, shard_size=target), ignore=files[one])
        if gone > 2 or new > 2:
            failures.append(f"seed {seed}, grow {one} to {grown[one]}: {gone} shards without it gone, {new} new")
    assert not failures, "\n".join(failures)


# ----------------------------------------------------------------------------------------------
# doc ids


def test_corpus_file_indices_brute_force(corpus):
    """Each shard's files map to their index in the corpus, a file cut across shards keeping one index."""
    sizes = [os.path.getsize(f) for f in corpus]
    continued = 0
    for shards in [plan_shards(corpus, sizes, num_shards=n) for n in range(1, 30)] + \
                  [plan_shards(corpus, sizes, shard_size=s) for s in (500, 1500, 4000)]:
        indices = corpus_file_indices([shard.files for shard in shards])
        assert [list(i) for i in indices] == [[corpus.index(f) for f in shard.files] for shard in shards]
        continued += sum(a.files[-1] == b.files[0] for a, b in zip(shards, shards[1:]))
    assert continued > 20  # the plans did cut files across shards
    assert [list(i) for i in corpus_file_indices([["a"], ["a", "b"], ["b"], ["b", "c", "d"], ["d"], ["e"]])] == \
        [[0], [0, 1], [1], [1, 2, 3], [3], [4]]


def test_corpus_doc_ids():
    """Local doc ids become the corpus's: the file index replaced, the position kept."""
    local = np.array([shard_doc_id(0, 5), shard_doc_id(0, POSITION_MASK), shard_doc_id(2, 0), shard_doc_id(1, 7)])
    assert list(corpus_doc_ids(local, np.array([3, 4, 9]))) == [3 << FILE_BITS | 5, 3 << FILE_BITS | POSITION_MASK,
                                                                 9 << FILE_BITS, 4 << FILE_BITS | 7]
    assert len(corpus_doc_ids(np.array([], dtype=np.int64), np.array([1]))) == 0
    assert FILE_BITS == 40 and shard_doc_id(3, 5) == (3 << 40) + 5
    with pytest.raises(ValueError):
        shard_doc_id(0, 1 << FILE_BITS)


# ----------------------------------------------------------------------------------------------
# settings and serialisation


@pytest.mark.parametrize("value, size", [
    ("512MB", 512 * 10**6), ("1GiB", 2**30), (1000, 1000), ("1000", 1000), ("1.5GiB", 3 * 2**29),
    ("64 kib", 64 * 1024), (" 2TB ", 2 * 10**12), ("100B", 100), ("3MiB", 3 * 2**20), ("7kB", 7000),
])
def test_parse_size(value, size):
    """Sizes as integers or strings with decimal and binary units, case-insensitive."""
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["", "MB", "12XB", "-5MB", "1e6", "five MB", "5 M", "1.2.3GB", "10 MB extra"])
def test_parse_size_rejects(value):
    """A string that is not a size is a ValueError."""
    with pytest.raises(ValueError):
        parse_size(value)


def test_splits_json_round_trip():
    """Splits survive the JSON of the corpus plan; a whole file is its path."""
    splits = [Split("a.jsonl"), Split("a.jsonl", 0, 10), Split("b.parquet", 2, None), Split("c.jsonl", 5, 9),
              Split("d.jsonl", 3, 7, 16)]
    text = dumps_splits(splits)
    assert json.loads(text)[0] == "a.jsonl"
    assert [Split.from_json(value) for value in json.loads(text)] == splits
