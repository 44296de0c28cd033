"""Result tables and plots.

``jkt.report.tables``: generic CSV -> paper-style markdown (mean ± std, best in bold) and
plots, re-exported here. One module per experiment writes its files:
``jkt.report.distill`` (Table 1), ``jkt.report.robustness`` (Table 2),
``jkt.report.transfer`` (Tables 3-5).
"""

from jkt.report.tables import (
    accuracy_tables,
    accuracy_vs_n_plot,
    aggregate,
    line_plot,
    markdown_table,
    mean_std,
    write_csv,
)

__all__ = ["accuracy_tables", "accuracy_vs_n_plot", "aggregate", "line_plot", "markdown_table",
           "mean_std", "write_csv"]
