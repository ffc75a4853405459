"""The tokenwise decode loop behind ``model.generate(custom_generate=..., trust_remote_code=True)``.

transformers copies this file into its module cache, imports it and calls ``generate(model=...,
...)``. The code lives in the installed package, :func:`tokenwise.generation.hf.custom_generate`;
:func:`tokenwise.custom_generate_path` gives the directory to pass.
"""

from tokenwise.generation.hf import custom_generate as generate

__all__ = ["generate"]
