"""Recordings: production exchanges written to files, read back for replay.

The files use GoReplay's format (:mod:`shadowproxy.record.goreplay`), so that GoReplay
can replay what shadowproxy recorded and shadowproxy can replay and compare what
GoReplay recorded; HAR 1.2 files (browsers, mitmproxy, Charles) are read too
(:mod:`shadowproxy.record.har`). A live run writes them off the primary path: a worker
decides (:mod:`shadowproxy.record.hook`) and hands each sampled exchange to a shadow
process, whose writer thread masks secrets and writes (:mod:`shadowproxy.record.writer`).
"""
