"""Test-wide setup: 8 fake CPU devices, set once before any JAX computation.

Multi-device tests build meshes over ``jax.devices()``; single-device tests pass
``jax.devices()[:1]`` explicitly.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import chex  # noqa: E402

chex.set_n_cpu_devices(8)
