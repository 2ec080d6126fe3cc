"""The engine through its Python wrapper: each operation against numpy, progress reporting,
cancellation and error classes."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors

from gslice import engine
from gslice.errors import OutputExistsError, SourceError

from conftest import hidden_leftovers


@pytest.fixture
def source(tmp_path):
    rng = np.random.default_rng(7)
    arrays = {"a": rng.integers(0, 2**16, (12, 10), dtype=np.uint16), "b": rng.random((6, 4, 9), dtype=np.float32)}
    specs = {
        n: safetensors.TensorSpec(dtype=str(a.dtype), shape=a.shape, data_ptr=a.ctypes.data, data_len=a.nbytes)
        for n, a in arrays.items()
    }
    safetensors.serialize_file(specs, str(tmp_path / "model.safetensors"))
    return tmp_path, arrays


def read(path):
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        for name, t in safetensors.deserialize(f.read_bytes()):
            dt = {"U16": np.uint16, "F32": np.float32}[t["dtype"]]
            out[name] = np.frombuffer(t["data"], dtype=dt).reshape(t["shape"])
    return out


def test_operations_match_numpy(source, tmp_path):
    src, a = source
    plan = engine.OutputPlan(
        tmp_path / "out",
        [
            engine.TensorPlan("copy", "a"),
            engine.TensorPlan("rows", "a", engine.keep_rows(5)),
            engine.TensorPlan("cols", "a", engine.keep_cols(3)),
            engine.TensorPlan("row_blocks", "a", engine.keep_row_blocks(2, [0, 1, 4])),
            engine.TensorPlan("col_blocks", "a", engine.keep_col_blocks(2, [4, 1, 2])),
            engine.TensorPlan("cols3d", "b", engine.keep_col_blocks(3, [0, 2])),
            engine.TensorPlan("rows3d", "b", engine.keep_rows(2)),
        ],
    )
    report = engine.execute(src, [plan])
    got = read(tmp_path / "out")
    A, B = a["a"], a["b"]
    expected = {
        "copy": A,
        "rows": A[:5],
        "cols": A[:, :3],
        "row_blocks": np.vstack([A[0:4], A[8:10]]),
        "col_blocks": np.hstack([A[:, 8:10], A[:, 2:6]]),
        "cols3d": np.concatenate([B[..., 0:3], B[..., 6:9]], axis=-1),
        "rows3d": B[:2],
    }
    assert got.keys() == expected.keys()
    for name, e in expected.items():
        assert np.array_equal(got[name], e), name
    assert report.outputs[0].tensor_bytes == sum(e.nbytes for e in expected.values())
    assert report.bytes_kernel_copied + report.bytes_gathered == report.outputs[0].tensor_bytes
    for name, e in expected.items():
        op = next(t.op for t in plan.tensors if t.name == name)
        assert engine.output_shape(a["a" if e.ndim == 2 else "b"].shape, op) == e.shape


def test_block_ranges_merge_adjacent_blocks():
    assert engine.keep_col_blocks(256, [0, 1, 2, 5, 6])["ranges"] == [[0, 768], [1280, 1792]]


def test_progress_reaches_the_total(source, tmp_path):
    src, _ = source
    calls = []
    engine.execute(src, [engine.OutputPlan(tmp_path / "out", [engine.TensorPlan("a", "a")])], progress=lambda d, t: calls.append((d, t)))
    size = (tmp_path / "out" / "model.safetensors").stat().st_size
    assert calls[-1] == (size, size)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_a_raising_callback_stops_the_run_cleanly(source, tmp_path):
    src, _ = source

    def stop(done, total):
        raise RuntimeError("user stop")

    with pytest.raises(RuntimeError, match="user stop"):
        engine.execute(src, [engine.OutputPlan(tmp_path / "out", [engine.TensorPlan("a", "a")])], progress=stop)
    assert not (tmp_path / "out").exists()
    assert hidden_leftovers(tmp_path) == []


def test_error_classes(source, tmp_path):
    src, _ = source
    (tmp_path / "exists").mkdir()
    with pytest.raises(OutputExistsError):
        engine.execute(src, [engine.OutputPlan(tmp_path / "exists", [engine.TensorPlan("a", "a")])])
    with pytest.raises(SourceError, match="tensor zz \\(for output a\\) is not in the source"):
        engine.execute(src, [engine.OutputPlan(tmp_path / "o", [engine.TensorPlan("a", "zz")])])
    with pytest.raises(SourceError, match=r"range \[0, 13\) is empty or outside 0..12"):
        engine.execute(src, [engine.OutputPlan(tmp_path / "o", [engine.TensorPlan("a", "a", engine.keep_rows(13))])])


def test_inspect_lists_tensors(source):
    src, a = source
    info = engine.inspect(src)
    assert {n: (t.dtype, t.shape, t.nbytes) for n, t in info.tensors.items()} == {
        "a": ("U16", (12, 10), 240),
        "b": ("F32", (6, 4, 9), 864),
    }
