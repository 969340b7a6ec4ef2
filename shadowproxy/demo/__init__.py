"""``make demo``: a primary, a candidate that differs, traffic, a check and a report."""
