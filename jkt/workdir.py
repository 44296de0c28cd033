"""A work directory for an experiment: JAX's runtime set up for it, its config recorded."""

from __future__ import annotations

from pathlib import Path

from jkt import config as config_lib

CONFIG_FILE = "config.json"


def setup_jax(workdir) -> None:
    """Joins a multi-host job when launched as one (``jkt.parallel.initialize_distributed``)
    and enables the persistent compilation cache under ``workdir/.jax_cache`` (identical
    steps of later and resumed runs skip XLA compilation); ``$JAX_COMPILATION_CACHE_DIR``
    wins over that location."""
    from jkt import parallel

    parallel.initialize_distributed()
    import jax

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(Path(workdir).absolute() / ".jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def prepare(cfg, workdir=None) -> Path:
    """:func:`setup_jax`, creates ``workdir`` (default ``cfg.workdir``) and writes the fully
    resolved ``cfg`` to ``workdir/config.json``; returns the directory."""
    out = Path(cfg.workdir if workdir is None else workdir)
    setup_jax(out)
    out.mkdir(parents=True, exist_ok=True)
    config_lib.write_json(cfg, out / CONFIG_FILE)
    return out


__all__ = ["CONFIG_FILE", "prepare", "setup_jax"]
