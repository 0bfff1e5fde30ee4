"""``seg2tflite matrix FILE``: a regression matrix of models x variants x data with budgets.

``spec`` reads and validates the matrix file (TOML), ``run`` converts every entry and evaluates
every (entry, variant) cell (in this process, a process pool or Ray tasks), ``report`` writes the
table and JUnit XML, ``command`` is the subcommand and ``pytest_plugin`` the pytest entry point
(``pytest --seg2tflite-matrix FILE`` and the ``seg2tflite_parity`` fixture).
"""
