"""The processes and what connects them.

``supervisor`` starts and restarts the workers and shadow processes and runs the
control process's ``stages`` (comparator, store writer, counters); ``shadow`` is the
shadow process (``shadowproxy-sN``); ``channel`` carries exchanges and counters from
the shadow processes and workers to the control process.
"""
