"""The paper's experiments as library functions of typed configs.

``jkt.grids.distill`` (Table 1), ``jkt.grids.robustness`` (Table 2) and
``jkt.grids.transfer`` (Tables 3-5): each defines its config dataclass and
``run(cfg) -> rows``, resumable, writing its tables through ``jkt.report``. The
``experiments/`` entry points are these configs plus a command line.
"""
