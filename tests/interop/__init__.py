"""The interoperability tier: gslice's outputs checked against transformers' Gemma 3n code.

Needs ``pip install '.[interop]'`` (torch, transformers, timm); run with
``python -m pytest -m interop tests/interop``. A package, so that its modules import as
``interop.*`` and its conftest does not shadow ``tests/conftest.py``.
"""
