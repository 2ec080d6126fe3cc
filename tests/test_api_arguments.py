"""Rule 6 of issue 11: the Python API raises gslice's own exceptions, each a GsliceError
exported in gslice.__all__, for wrong argument types (None, bytes, floats for integers,
strings for flags), naming the argument; a thread count the CLI refuses is refused here too."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import gslice
from conftest import hidden_leftovers


def test_every_exception_is_exported_and_one_hierarchy():
    exported = {n: getattr(gslice, n) for n in gslice.__all__}
    classes = {n: c for n, c in vars(gslice.errors).items() if inspect.isclass(c) and issubclass(c, BaseException)}
    assert set(classes) <= set(exported)
    for name, cls in classes.items():
        # Interrupted is a KeyboardInterrupt, so that `except Exception` does not swallow Ctrl-C.
        assert issubclass(cls, gslice.Interrupted if name == "Interrupted" else gslice.GsliceError), name
    assert issubclass(gslice.Interrupted, KeyboardInterrupt) and not issubclass(gslice.Interrupted, Exception)


SLICE_ARGS = [
    (dict(src=None), "src must be a path (str or os.PathLike), not None"),
    (dict(src=b"model"), "src must be a path (str or os.PathLike), not bytes b'model'"),
    (dict(out=None), "out must be a path (str or os.PathLike), not None"),
    (dict(out=b"out"), "out must be a path (str or os.PathLike), not bytes b'out'"),
    (dict(overwrite="yes"), "overwrite must be True or False, not str 'yes'"),
    (dict(text_only=1), "text_only must be True or False, not int 1"),
    (dict(drop_audio=None), "drop_audio must be True or False, not None"),
    (dict(threads=2.0), "threads must be an integer, not float 2.0"),
    (dict(threads=10**6), "threads = 1000000 is out of range: it must be from 1 to 256"),
    (dict(threads=0), "threads = 0 is out of range: it must be from 1 to 256"),
    (dict(max_shard_size="5GB"), "max_shard_size must be an integer, not str '5GB'"),
    (dict(max_shard_size=1e9), "max_shard_size must be an integer, not float 1000000000.0"),
    (dict(progress="bar"), "progress must be a callable or None, not str 'bar'"),
    (dict(revision=5), "revision must be a string or None, not int 5"),
    (dict(preset=5), "preset must be a preset id or name (str), not int"),
    (dict(spec={"layers_to_skip": [1]}), "spec must be a SliceSpec or None, not dict"),
    (dict(layers_to_skip=[20.0]), "layers_to_skip[0] = 20.0 is not an integer layer index"),
    (dict(layers_to_skip="20-24"), "layers_to_skip must be a list of integers, not '20-24'"),
    (dict(ffn_dims=32.0), "ffn_dims must be an integer or a list of integers, not 32.0"),
    (dict(quant=4), "quant: 4 is not a supported scheme (choose int4 or int8)"),
    (dict(quant="int4", group_size=128.0), "group_size: 128.0 is not supported (choose 32, 64, 128)"),
    (dict(quant="int4", quant_audio="no"), "quant_audio must be True or False, not str 'no'"),
]


@pytest.mark.parametrize("kwargs,message", SLICE_ARGS, ids=[m[:40] for _, m in SLICE_ARGS])
def test_slice_model_names_the_wrong_argument(e4b, tmp_path, kwargs, message):
    args = {"src": e4b, "out": tmp_path / "out", **kwargs}
    with pytest.raises(gslice.GsliceError) as e:
        gslice.slice_model(**args)
    assert str(e.value) == message
    assert not (tmp_path / "out").exists() and hidden_leftovers(tmp_path) == []


OTHER_CALLS = [
    (gslice.plan, dict(src_or_config=b"x"), "src_or_config must be a path (str or os.PathLike), not bytes b'x'"),
    (gslice.plan, dict(context=4096.0), "context must be an integer, not float 4096.0"),
    (gslice.plan, dict(preset=["google-e2b"]), "preset must be a preset id or name (str), not list"),
    (gslice.plan, dict(modalities=None), "modalities: None is not one of all, text+audio, text"),
    (gslice.plan, dict(from_hub="no"), "from_hub must be True or False, not str 'no'"),
    (gslice.recommend, dict(ram=None), "--ram: None must be a positive size"),
    (gslice.recommend, dict(ram="4GB", ple_on_disk="yes"), "ple_on_disk must be True or False, not str 'yes'"),
    (gslice.recommend, dict(ram="4GB", quant=["int4"]), "--quant: ['int4'] is not one of bf16, int8, int4"),
    (gslice.presets, dict(from_hub=1), "from_hub must be True or False, not int 1"),
    (gslice.load_spec_file, dict(path=None), "path must be a path (str or os.PathLike), not None"),
    (gslice.SliceSpec.build, dict(drop_vision="false"), "drop_vision must be true or false, not 'false'"),
    (gslice.prepare_slice, dict(src=3), "src must be a path (str or os.PathLike), not int 3"),
]


@pytest.mark.parametrize("fn,kwargs,message", OTHER_CALLS, ids=[m[:40] for _, _, m in OTHER_CALLS])
def test_other_functions_name_the_wrong_argument(fn, kwargs, message):
    with pytest.raises(gslice.GsliceError) as e:
        fn(**kwargs)
    assert str(e.value) == message


def test_numpy_integers_are_integers(e4b, tmp_path):
    report = gslice.slice_model(e4b, tmp_path / "out", layers_to_skip=np.arange(20, 25), ffn_dims=np.int64(32), threads=np.int32(2))
    assert report.layers == 30 and report.ffn_dims == [32] * 30


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(type="q4_k_m", imatrix=b"m.gguf"), gslice.ArgumentError, "imatrix must be a path (str or os.PathLike), not bytes b'm.gguf'"),
    (dict(type="q4_k_m", imatrix=3), gslice.ArgumentError, "imatrix must be a path (str or os.PathLike), not int 3"),
    (dict(type="bf16", imatrix="m.gguf"), gslice.SpecError,
     "--imatrix: a bf16 file is written as llama.cpp's converter writes it, which reads no importance matrix "
     "(give one of q6_k, q5_k_m, q5_k, q4_k_m, q4_k, q4_0)"),
    (dict(type="Q4_K_M"), gslice.SpecError,
     "gguf type: 'Q4_K_M' is not supported (choose f32, bf16, f16, q8_0, q6_k, q5_k_m, q5_k, q4_k_m, q4_k, q4_0)"),
])
def test_the_gguf_format_names_the_wrong_argument(kwargs, error, message):
    with pytest.raises(error) as e:
        gslice.GGUF(**kwargs)
    assert str(e.value) == message
