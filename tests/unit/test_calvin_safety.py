"""CALVIN's pickled language annotations: hand-built hostile pickles are refused quickly with one line naming the
file (no huge allocation, no exponential expansion of shared references, no crash), and the one-time JSON
conversion gives exactly the annotations the .npy gives."""

from __future__ import annotations

import json
import multiprocessing
import pickle as P
import struct
import time
import warnings

import numpy as np
import pytest

from vlaforge.cli.main import main
from vlaforge.data import calvin
from vlaforge.data.calvin import ANNOTATIONS, ANNOTATIONS_JSON, AnnotationLimits, CalvinSource, read_annotations
from vlaforge.data.convert import SourceError
from vlaforge.types import ACTION, OBS_STATE, image_key

# ------------------------------------------------------------------------------------- hand-written pickles
NDARRAY = P.GLOBAL + b"numpy\nndarray\n"
RECONSTRUCT = P.GLOBAL + b"numpy._core.multiarray\n_reconstruct\n"
DTYPE = P.GLOBAL + b"numpy\ndtype\n"


def s(text: str) -> bytes:
    b = text.encode()
    return P.BINUNICODE + struct.pack("<I", len(b)) + b


def n(value: int) -> bytes:
    b = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return P.LONG1 + bytes([len(b)]) + b


def get(i: int) -> bytes:
    return P.BINGET + bytes([i])


def put(i: int) -> bytes:
    return P.BINPUT + bytes([i])


def dtype(code: str) -> bytes:  # numpy's own pickling of a dtype: dtype(code, False, True) + BUILD(canonical state)
    state = np.dtype(code).__reduce__()[2]
    return DTYPE + s(code) + P.NEWFALSE + P.NEWTRUE + P.TUPLE3 + P.REDUCE + \
        P.MARK + b"".join(n(v) if isinstance(v, int) else s(v) if isinstance(v, str) else P.NONE
                          for v in state) + P.TUPLE + P.BUILD


SEGMENT = P.EMPTY_LIST + P.MARK + n(0) + n(1) + P.TUPLE2 + P.APPENDS


def annotations(ann: bytes, indx: bytes = SEGMENT, prefix: bytes = b"") -> bytes:
    """{"language": {"ann": <ann>}, "info": {"indx": <indx>}} (one segment by default), as protocol 2."""
    return P.PROTO + b"\x02" + prefix + P.EMPTY_DICT + P.MARK + s("language") + P.EMPTY_DICT + s("ann") + ann + \
        P.SETITEM + s("info") + P.EMPTY_DICT + s("indx") + indx + P.SETITEM + P.SETITEMS + P.STOP


def write_npy(root, payload: bytes):
    path = root / ANNOTATIONS
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
        f.write(payload)
    return path


def refused(root, match: str, limits: AnnotationLimits = calvin.LIMITS) -> str:
    t0 = time.perf_counter()
    with pytest.raises(SourceError, match=match) as info:
        read_annotations(root, limits)
    assert time.perf_counter() - t0 < 1.0
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 600 and str(root / ANNOTATIONS) in msg
    return msg


HUGE = n(10**13)  # 80 TB of float64: the old code's allocation raised a raw MemoryError
CALLS = {  # every opcode that calls numpy.ndarray / _reconstruct with a shape the pickle chooses
    "REDUCE": NDARRAY + HUGE + P.TUPLE1 + P.REDUCE,
    "INST": P.MARK + HUGE + P.INST + b"numpy\nndarray\n",
    "OBJ": P.MARK + NDARRAY + HUGE + P.OBJ,
    "NEWOBJ": NDARRAY + HUGE + P.TUPLE1 + P.NEWOBJ,
    "_reconstruct": RECONSTRUCT + P.MARK + NDARRAY + HUGE + P.TUPLE1 + P.SHORT_BINBYTES + b"\x01b" + P.TUPLE +
    P.REDUCE,
    "_reconstruct U": RECONSTRUCT + P.MARK + NDARRAY + n(10**7) + P.TUPLE1 + s("U100000") + P.TUPLE + P.REDUCE,
}


@pytest.mark.parametrize("op", list(CALLS))
def test_array_construction_with_a_huge_shape_is_refused_before_allocating(tmp_path, op):
    write_npy(tmp_path, P.PROTO + b"\x02" + CALLS[op] + P.STOP)
    refused(tmp_path, "refusing an opcode that instantiates|refusing to call|refusing an array of|past the budget")


def test_cli_names_the_file_in_one_line(tmp_path, capsys):
    write_npy(tmp_path, P.PROTO + b"\x02" + CALLS["REDUCE"] + P.STOP)
    assert main(["convert", "calvin", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(tmp_path / ANNOTATIONS) in err and "refusing to call numpy.ndarray" in err


def test_array_states_are_checked_against_their_shape_and_the_budget(tmp_path):
    empty_f8 = RECONSTRUCT + P.MARK + NDARRAY + n(0) + P.TUPLE1 + P.SHORT_BINBYTES + b"\x01b" + P.TUPLE + P.REDUCE
    # 10**6 float64 (8 MB) under a 1 MB budget: refused before numpy copies the (here absent) data
    big = P.MARK + n(1) + n(10**6) + P.TUPLE1 + dtype("f8") + P.NEWFALSE + P.SHORT_BINBYTES + b"\x00" + P.TUPLE
    write_npy(tmp_path, annotations(empty_f8 + big + P.BUILD))
    refused(tmp_path, r"array state \(1000000 elements\) takes the data past the budget of 1048576 bytes",
            AnnotationLimits(max_bytes=1 << 20))
    write_npy(tmp_path, annotations(empty_f8 + big + P.BUILD))
    refused(tmp_path, "1000000 elements of float64 need 8000000 bytes, got a bytes")
    # 10**8 zero-byte strings would be 10**8 Python objects once handed out: zero-size dtypes are refused
    zero = P.MARK + n(1) + n(10**8) + P.TUPLE1 + dtype("S0") + P.NEWFALSE + P.SHORT_BINBYTES + b"\x00" + P.TUPLE
    write_npy(tmp_path, annotations(empty_f8 + zero + P.BUILD))
    refused(tmp_path, "dtype: refusing a dtype of zero-size elements")
    # a structured dtype (numpy trusts its pickled offsets) is refused as a dtype kind
    write_npy(tmp_path, annotations(DTYPE + s("V8") + P.NEWFALSE + P.NEWTRUE + P.TUPLE3 + P.REDUCE))
    refused(tmp_path, r"dtype: expected \(type code, align, copy\)")


def _read_in_child(root, conn) -> None:
    try:
        read_annotations(root)
        conn.send("loaded")
    except SourceError as e:
        conn.send(str(e))


def test_object_array_state_must_hold_one_value_per_element(tmp_path):
    """numpy trusts the list's length: (3,) with 1 value left two dangling pointers (a crash when freed). Read in
    a forked child so that a regression crashes the child, not the test run."""
    obj3 = RECONSTRUCT + P.MARK + NDARRAY + n(0) + P.TUPLE1 + P.SHORT_BINBYTES + b"\x01b" + P.TUPLE + P.REDUCE + \
        P.MARK + n(1) + n(3) + P.TUPLE1 + dtype("O") + P.NEWFALSE + P.EMPTY_LIST + s("a") + P.APPEND + P.TUPLE + \
        P.BUILD
    write_npy(tmp_path, annotations(obj3))
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_read_in_child, args=(tmp_path, child))
    proc.start()
    proc.join(timeout=20)
    assert proc.exitcode == 0, f"child exit code {proc.exitcode}"
    msg = parent.recv()
    assert "an object array of 3 elements needs a list of 3 values, got a list of 1" in msg, msg


def shared_lists(width: int, depth: int) -> bytes:
    """A list holding the same list `width` times, nested `depth` deep: width**depth leaves from a few bytes."""
    out = P.EMPTY_LIST + P.MARK + n(0) * width + P.APPENDS
    for k in range(1, depth):
        out += put(k - 1) + P.POP + P.EMPTY_LIST + P.MARK + get(k - 1) * width + P.APPENDS
    return out


def test_shared_reference_bombs_are_never_expanded(tmp_path):
    bomb = shared_lists(10, 6)  # 10**6 leaves from ~130 bytes; the old reader str()-ed them into one instruction
    write_npy(tmp_path, annotations(P.EMPTY_LIST + bomb + P.APPEND))
    refused(tmp_path, r"language\.ann\[0\] is a list, expected a string")
    # the same as a dict key: hashing a tuple of shared tuples is exponential too
    tup = P.MARK + n(0) * 20 + P.TUPLE
    for k in range(1, 4):
        tup += put(k - 1) + P.POP + P.MARK + get(k - 1) * 20 + P.TUPLE
    write_npy(tmp_path, annotations(SEGMENT, prefix=P.EMPTY_DICT + tup + n(1) + P.SETITEM + P.POP))
    refused(tmp_path, "dict key: refusing a tuple")


def test_shared_strings_count_each_time_they_are_handed_out(tmp_path):
    """2000 references to one 1 KiB string are 2 MB of instructions from a 5 KB file: over a 1 MB budget."""
    refs = P.EMPTY_LIST + P.MARK + s("x" * 1024) + put(0) + get(0) * 1999 + P.APPENDS
    segments = P.EMPTY_LIST + P.MARK + n(0) + n(1) + P.TUPLE2 + put(1) + get(1) * 1999 + P.APPENDS
    write_npy(tmp_path, annotations(refs, segments))
    refused(tmp_path, "language.ann takes the data past the budget of 1048576 bytes",
            AnnotationLimits(max_bytes=1 << 20))
    refused(tmp_path, "language.ann takes the data past the budget of 1000 values", AnnotationLimits(max_items=1000))
    assert len(read_annotations(tmp_path, prefer_json=False).instructions) == 2000  # within the default limits


@pytest.mark.parametrize(("payload", "match"), [
    (P.PROTO + b"\x02" + P.EMPTY_DICT + n(1) + P.APPEND + P.STOP, "APPEND into a dict, expected a list"),
    (P.PROTO + b"\x02" + P.EMPTY_LIST + n(1) + n(2) + P.SETITEM + P.STOP, "SETITEM into a list, expected a dict"),
    (P.PROTO + b"\x02" + P.EMPTY_LIST + P.MARK, "EOFError"),
    (P.PROTO + b"\x02" + P.APPEND, "IndexError"),
    (P.PROTO + b"\x02" + P.GLOBAL + b"os\nsystem\n", "refusing to load os.system"),
    (annotations(P.EMPTY_LIST + P.MARK + s("a") + n(7) + P.APPENDS), r"language\.ann\[1\] is a int"),
    (annotations(P.EMPTY_LIST + P.MARK + s("a") + P.APPENDS, SEGMENT[:-1] + n(5) + P.APPENDS),
     r"info\.indx\[1\] is a int, expected a list"),
], ids=["append-to-dict", "setitem-on-list", "truncated", "underflow", "global", "ann-type", "indx-type"])
def test_malformed_pickles_are_one_line_errors(tmp_path, payload, match):
    write_npy(tmp_path, payload)
    refused(tmp_path, match)


def test_memory_and_recursion_errors_name_the_file(tmp_path, monkeypatch):
    write_npy(tmp_path, annotations(P.EMPTY_LIST))

    def exhausted(self):
        raise MemoryError

    monkeypatch.setattr(calvin._ArraysOnly, "load", exhausted)
    refused(tmp_path, "MemoryError: ran out of memory")
    (tmp_path / ANNOTATIONS_JSON).write_text('{"format": "vlaforge.calvin_annotations", "version": 1, '
                                             '"language": {"ann": ' + "[" * 100_000 + "]" * 100_000 + "}}")
    with pytest.raises(SourceError, match="auto_lang_ann.json.*RecursionError: nested too deeply"):
        read_annotations(tmp_path)


def test_a_plain_npy_header_cannot_size_an_allocation(tmp_path):
    path = tmp_path / ANNOTATIONS
    path.parent.mkdir(parents=True)
    with open(path, "wb") as f:  # 8 PB of float64 announced, none present
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (10**15,)})
    refused(tmp_path, "expected a pickled object")


def test_numpy1_pickles_read_like_np_load(tmp_path):
    """CALVIN's files were written by numpy 1.x (protocol 3, numpy.core.multiarray): read without a
    DeprecationWarning, to what np.load(allow_pickle=True) — CALVIN's own reader — gives."""
    d = {"language": {"ann": ["go left", "go right"], "task": ["move", "move"], "emb": np.ones((2, 1, 3), np.float32)},
         "info": {"episodes": [], "indx": [(0, 4), (np.int64(5), np.int64(8))]}}
    legacy = P.dumps(np.array(d, dtype=object), protocol=3)
    path = write_npy(tmp_path, legacy.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = read_annotations(tmp_path)
    ref = np.load(path, allow_pickle=True).item()
    assert got.instructions == ref["language"]["ann"] and got.tasks == ref["language"]["task"]
    assert got.segments == [tuple(map(int, p)) for p in ref["info"]["indx"]]


# ------------------------------------------------------------------------------------------ JSON converter
def write_split(root, anns, segments, *, as_array: bool = False) -> None:
    """A small CALVIN split, annotations saved the way CALVIN does (np.save of a dict)."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(len(anns))
    for t in range(max(e for _, e in segments) + 1):
        np.savez(root / f"episode_{t:07d}.npz", rgb_static=rng.integers(0, 255, (8, 8, 3), np.uint8),
                 rgb_gripper=rng.integers(0, 255, (4, 4, 3), np.uint8), robot_obs=rng.normal(size=15),
                 rel_actions=rng.uniform(-1, 1, 7), actions=rng.uniform(-1, 1, 7))
    tasks = ["open_drawer" for _ in anns]  # one str object: pickled once, then memo references
    language = {"ann": np.array(anns) if as_array else list(anns), "task": tasks,
                "emb": np.zeros((len(anns), 1, 4), np.float32)}
    (root / "lang_annotations").mkdir()
    np.save(root / ANNOTATIONS, {"language": language, "info": {"episodes": [], "indx": segments}},
            allow_pickle=True)


def test_converted_json_gives_the_same_episodes(tmp_path, capsys, caplog):
    data = tmp_path / "task_D_D"
    write_split(data / "training", ["open the drawer", "öffne die Schublade", "push the block"],
                [(0, 3), (np.int64(4), np.int64(6)), (7, 9)])
    write_split(data / "validation", ["lift the red block", "turn on the lamp"], [(0, 2), (3, 5)], as_array=True)
    before = {split: CalvinSource(data / split) for split in ("training", "validation")}
    episodes = {split: [src.read(i) for i in range(len(src))] for split, src in before.items()}
    assert "vlaforge convert calvin-annotations" in caplog.text  # the hint while the .npy is read

    assert main(["convert", "calvin-annotations", str(data)]) == 0
    assert capsys.readouterr().out.count("wrote ") == 2
    doc = json.loads((data / "training" / ANNOTATIONS_JSON).read_text(encoding="utf-8"))
    assert doc == {"format": "vlaforge.calvin_annotations", "version": 1,
                   "language": {"ann": ["open the drawer", "öffne die Schublade", "push the block"],
                                "task": ["open_drawer"] * 3},
                   "info": {"indx": [[0, 3], [4, 6], [7, 9]]}}
    for split in ("training", "validation"):
        (data / split / ANNOTATIONS).write_bytes(b"not read any more")
        after = CalvinSource(data / split)
        assert after.annotations_path == data / split / ANNOTATIONS_JSON
        assert (after.instructions, after.segments) == (before[split].instructions, before[split].segments)
        assert read_annotations(data / split).tasks == ["open_drawer"] * len(after)
        for i, ep in enumerate(episodes[split]):
            got = after.read(i)
            assert got.task == ep.task and got.frames.keys() == ep.frames.keys()
            for key in (image_key("static"), image_key("gripper"), OBS_STATE, ACTION):
                np.testing.assert_array_equal(got.frames[key], ep.frames[key])

    # an existing JSON is kept unless --overwrite; then the (now corrupt) .npy is named in one line
    assert main(["convert", "calvin-annotations", str(data / "training")]) == 1
    assert "exists (--overwrite to replace)" in capsys.readouterr().err
    assert main(["convert", "calvin-annotations", str(data / "training"), "--overwrite"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(data / "training" / ANNOTATIONS) in err
    assert not list((data / "training" / "lang_annotations").glob("*.partial"))


def test_json_annotations_are_validated(tmp_path):
    (tmp_path / "lang_annotations").mkdir()
    path = tmp_path / ANNOTATIONS_JSON
    path.write_text('{"language": {"ann": ["a"]}, "info": {"indx": [[0, 1]]}}')
    with pytest.raises(SourceError, match=r"auto_lang_ann\.json.*expected a JSON object with \"format\""):
        read_annotations(tmp_path)
    path.write_text('{"format": "vlaforge.calvin_annotations", "version": 1, "language": {"ann": ["a", 3]}, '
                    '"info": {"indx": [[0, 1], [2, 3]]}}')
    with pytest.raises(SourceError, match=r"language\.ann\[1\] is a int, expected a string"):
        read_annotations(tmp_path)
    path.write_text('{"format": "vlaforge.calvin_annotations", "version": 1, "language": {"ann": ["a"]}, '
                    '"info": {"indx": [[0, -1]]}}')
    with pytest.raises(SourceError, match=r"info\.indx\[0\] must be a \(start, end\) pair"):
        read_annotations(tmp_path)
