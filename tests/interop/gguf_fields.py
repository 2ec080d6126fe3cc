"""Reading a GGUF file's metadata back with the gguf package, and comparing two files' values
(llama.cpp's float arrays compared as float32, the type they are stored in)."""

from __future__ import annotations

import gguf
import numpy as np


def metadata(reader: gguf.GGUFReader, skip=()) -> dict:
    """Every key-value pair but the header's (``GGUF.*``) and those in ``skip``."""
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.") and k not in skip}


def assert_same_values(ours: dict, theirs: dict) -> None:
    """Each of ``theirs``' keys holds the same value in ``ours``."""
    for key, vb in theirs.items():
        va = ours[key]
        if isinstance(vb, list) and vb and isinstance(vb[0], float):
            assert np.array_equal(np.array(va, np.float32), np.array(vb, np.float32)), key
        else:
            assert va == vb, key
