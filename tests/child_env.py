"""The environment of the processes the tests launch (command lines, multi-host workers).

The test process runs on 8 fake CPU devices (``conftest.py``); a child runs on its own
devices, so the fake device count is dropped from ``XLA_FLAGS``. Every other XLA flag (the
suite's backend optimisation level, ``conftest.py``) is passed on.
"""

import os
import re

_DEVICE_COUNT = re.compile(r"--xla_force_host_platform_device_count=\S*")


def xla_flags(*extra: str) -> str:
    """This process's ``XLA_FLAGS`` without the fake device count, plus ``extra`` flags."""
    flags = _DEVICE_COUNT.sub("", os.environ.get("XLA_FLAGS", "")).split()
    return " ".join([*flags, *extra])


def child_env(**extra: str) -> dict[str, str]:
    """A copy of ``os.environ`` for a child process: ``XLA_FLAGS`` as :func:`xla_flags`,
    then ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags():
        env["XLA_FLAGS"] = xla_flags()
    env.update(extra)
    return env
