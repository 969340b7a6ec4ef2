"""Noise cancellation: learn which differences production has with itself.

With a *secondary* (a second copy of production) every mirrored exchange gives two
comparisons: primary vs candidate and primary vs secondary. For each endpoint and
field (:attr:`Difference.field`, array indexes folded) the learner counts

* ``N`` exchanges of the endpoint observed with a secondary answer,
* ``R`` of those where primary and candidate differ on the field,
* ``S`` of those where primary and secondary differ on the field.

A field is **noise** when the candidate does not differ more often than production
differs from itself. The test is one-sided, H0: p_R <= p_S against H1: p_R > p_S,
with the two-proportion pooled z-test, or Fisher's exact test (hypergeometric tail
computed with ``math.lgamma``) when an expected cell count of the 2x2 table is below
5. Following Diffy, a field is a **real difference** (not noise) only when all hold:

* p-value < ``noise.alpha``,
* relative effect ``(R - S) / (R + S)`` > ``noise.relative``,
* absolute effect ``(R - S) / N`` > ``noise.absolute``;

otherwise it is noise. Rules around the test:

* a field the secondary never differed on (``S == 0``) is never noise;
* before ``noise.min_samples`` exchanges with a secondary the learner makes no
  statistical judgement: a field the secondary has shown (``S > 0``) is
  *provisionally* noise (flagged ``provisional`` in the evidence), others are not;
* exchanges without a secondary answer do not count at all (not even for ``R``);
* an exchange where an answer failed (a 5xx or no complete answer, on any of the
  three sides) counts for ``N`` and for the status and header fields, but not for the
  fields of the body (:func:`body_field`), on either side: a failed answer differs from
  the others on every body field and tells nothing about any of them. Counted as the
  secondary showing them, one failed primary or secondary made every body field
  (provisionally) noise, and the candidate's real differences on them were forgiven;
* the body differences between a failed primary and the candidate (or a primary and
  a failed candidate) are the failure's: :meth:`NoiseLearner.noise_fields` returns
  them as noise for that exchange (``failed=True``), whatever the field's counts; the
  status difference is judged as any field;
* at most :data:`MAX_FIELDS_PER_ENDPOINT` fields are tracked per endpoint (fields
  with unbounded names would otherwise grow memory); untracked fields are never noise.

Decisions are computed lazily: a field's decision is cached with the ``(N, R, S)``
it was computed from and recomputed only when asked after those changed.

Learning together: every learner (each comparator of a fleet, and a control process
across restarts) saves its own counts to the store (:meth:`NoiseLearner.own_counts`,
keyed by a name of its own) and reads the others' sums back
(:meth:`NoiseLearner.set_others`); its decisions use its counts plus theirs. Each
exchange is observed by one learner, so the sums count it once: noise learned from any
comparator's share of the traffic serves all of them.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..config import NoiseConfig

log = logging.getLogger("shadowproxy.noise")

MAX_FIELDS_PER_ENDPOINT = 10_000


@dataclass(frozen=True, slots=True)
class NoiseEvidence:
    """Why a field of an endpoint is (or is not) considered noise."""

    endpoint: str
    field: str
    n: int              # exchanges with a secondary answer
    r: int              # ... where primary != candidate on the field
    s: int              # ... where primary != secondary on the field
    p_value: float      # one-sided, H1: candidate differs more often than the secondary
    noise: bool
    provisional: bool   # n < min_samples: no statistical judgement yet
    decided_at: float   # unix time the current decision was first reached


def body_field(name: str) -> bool:
    """A field of the body (a JSONPath, ``body.line[*]``, ``body.form.*``,
    ``body.bytes``: :class:`~shadowproxy.models.Difference`), not the status or a
    header."""
    return name.startswith(("$", "body."))


# ------------------------------------------------------------------ the statistics


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_greater(n: int, r: int, s: int) -> float:
    """One-sided Fisher exact p-value, P(X >= r), for the table [[r, n-r], [s, n-s]].

    Under H0 (equal proportions), given the margins, X ~ Hypergeometric(2n, r+s, n)."""
    k = r + s
    lo, hi = max(0, k - n), min(k, n)
    if r <= lo:
        return 1.0
    base = _log_comb(2 * n, n)
    # sum the smaller tail for accuracy
    if r > (lo + hi) / 2:
        total = sum(math.exp(_log_comb(k, x) + _log_comb(2 * n - k, n - x) - base)
                    for x in range(r, hi + 1))
    else:
        total = 1.0 - sum(math.exp(_log_comb(k, x) + _log_comb(2 * n - k, n - x) - base)
                          for x in range(lo, r))
    return min(1.0, max(0.0, total))


def ztest_greater(n: int, r: int, s: int) -> float:
    """One-sided pooled two-proportion z-test p-value for p_r > p_s (equal sizes n)."""
    if n <= 0:
        return 1.0
    p = (r + s) / (2 * n)
    se = math.sqrt(p * (1.0 - p) * (2.0 / n))
    if se == 0.0:
        return 1.0 if r <= s else 0.0
    z = (r / n - s / n) / se
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def two_proportion_pvalue(n: int, r: int, s: int) -> float:
    """Fisher's exact test when an expected count is below 5, else the pooled z-test."""
    if n <= 0:
        return 1.0
    k = r + s
    if min(k, 2 * n - k) < 10:          # expected cells n*p or n*(1-p) below 5
        return fisher_greater(n, r, s)
    return ztest_greater(n, r, s)


# A field already judged noise is re-tested after every exchange; at a fixed alpha those
# repeated looks would flip an A/A field to "real" for stretches. Leaving noise takes
# evidence this many times stronger (a simple guard against sequential testing).
FLIP_TO_REAL = 0.05


def judge(n: int, r: int, s: int, cfg: NoiseConfig, *, was_noise: bool = False
          ) -> tuple[bool, float, bool]:
    """→ (noise, p_value, provisional) for one field. ``was_noise``: it was judged noise
    (past ``min_samples``) at the previous look, so leaving noise needs p < alpha × FLIP_TO_REAL."""
    if s <= 0:
        return False, (two_proportion_pvalue(n, r, s) if n >= cfg.min_samples else 1.0), \
            n < cfg.min_samples
    if n < cfg.min_samples:
        return True, 1.0, True
    p = two_proportion_pvalue(n, r, s)
    alpha = cfg.alpha * FLIP_TO_REAL if was_noise else cfg.alpha
    real = (p < alpha
            and (r - s) / (r + s) > cfg.relative
            and (r - s) / n > cfg.absolute)
    return (not real), p, False


# ------------------------------------------------------------------ the learner


class _Field:
    __slots__ = ("r", "s", "key", "noise", "p_value", "provisional", "decided_at")

    def __init__(self) -> None:
        self.r = 0
        self.s = 0
        self.key: tuple[int, int, int] | None = None   # (n, r, s) of the cached decision
        self.noise = False
        self.p_value = 1.0
        self.provisional = True
        self.decided_at = 0.0


class _Endpoint:
    __slots__ = ("n", "fields", "overflowed", "other_n", "others")

    def __init__(self) -> None:
        self.n = 0
        self.fields: dict[str, _Field] = {}
        self.overflowed = False
        self.other_n = 0                                # N of the other learners
        self.others: dict[str, tuple[int, int]] = {}    # field → their (R, S)

    def totals(self, name: str, f: _Field | None) -> tuple[int, int, int]:
        """(N, R, S) of this learner and the others together."""
        r, s = self.others.get(name, (0, 0))
        if f is not None:
            r, s = r + f.r, s + f.s
        return self.n + self.other_n, r, s


Counts = tuple[str, str, int, int, int]     # (endpoint, field or "", N, R, S)


class NoiseLearner:
    """Counts candidate/secondary differences per (endpoint, field); judges noise."""

    def __init__(self, cfg: NoiseConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self._clock = clock
        self._endpoints: dict[str, _Endpoint] = {}
        self._lock = threading.Lock()

    def _field(self, ep: _Endpoint, endpoint: str, name: str) -> _Field | None:
        f = ep.fields.get(name)
        if f is None:
            if len(ep.fields) >= MAX_FIELDS_PER_ENDPOINT:
                if not ep.overflowed:
                    ep.overflowed = True
                    log.warning("noise: endpoint %s has more than %d distinct difference "
                                "fields; further fields are not learned", endpoint,
                                MAX_FIELDS_PER_ENDPOINT)
                return None
            f = ep.fields[name] = _Field()
        return f

    def observe(self, endpoint: str, candidate_fields: Iterable[str],
                secondary_fields: Iterable[str] | None, *, failed: bool = False) -> None:
        """Count one exchange: the fields primary≠candidate and primary≠secondary.

        ``secondary_fields`` None means there was no secondary answer: nothing counts.
        ``failed``: an answer of the exchange (primary, candidate or secondary) failed;
        its body fields are no evidence either way and are not counted."""
        if secondary_fields is None:
            return
        if failed:
            candidate_fields = [f for f in candidate_fields if not body_field(f)]
            secondary_fields = [f for f in secondary_fields if not body_field(f)]
        with self._lock:
            ep = self._endpoints.get(endpoint)
            if ep is None:
                ep = self._endpoints[endpoint] = _Endpoint()
            ep.n += 1
            for name in candidate_fields:
                f = self._field(ep, endpoint, name)
                if f is not None:
                    f.r += 1
            for name in secondary_fields:
                f = self._field(ep, endpoint, name)
                if f is not None:
                    f.s += 1

    def _decide(self, endpoint: str, ep: _Endpoint, name: str, f: _Field) -> None:
        key = ep.totals(name, f)
        if f.key == key:
            return
        was_noise = f.key is not None and f.noise and not f.provisional
        noise, p, provisional = judge(*key, self.cfg, was_noise=was_noise)
        if f.key is None or noise != f.noise:
            f.decided_at = self._clock()
        f.key, f.noise, f.p_value, f.provisional = key, noise, p, provisional

    def is_noise(self, endpoint: str, field: str) -> bool:
        return field in self.noise_fields(endpoint, (field,))

    def noise_fields(self, endpoint: str, fields: Iterable[str], *, failed: bool = False
                     ) -> frozenset[str]:
        """Which of ``fields`` are noise for ``endpoint`` now. ``failed``: they are the
        differences of an exchange whose primary or candidate answer failed; its body
        fields are the failure's differences, noise whatever their counts."""
        out = []
        if failed:
            out = [name for name in fields if body_field(name)]
            fields = [name for name in fields if not body_field(name)]
        with self._lock:
            ep = self._endpoints.get(endpoint)
            if ep is None:
                return frozenset(out)
            for name in fields:
                f = ep.fields.get(name)
                if f is None:
                    if ep.others.get(name, (0, 0))[1] == 0:
                        continue
                    f = self._field(ep, endpoint, name)     # shown by another learner
                    if f is None:
                        continue
                elif f.s == 0 and ep.others.get(name, (0, 0))[1] == 0:
                    continue
                self._decide(endpoint, ep, name, f)
                if f.noise:
                    out.append(name)
            return frozenset(out)

    def evidence(self, include_not_noise: bool = True) -> list[NoiseEvidence]:
        """Evidence of every field the secondary has shown (``S > 0``), each flagged
        ``noise`` or not, sorted by (endpoint, field); ``include_not_noise=False``
        keeps only the fields judged noise now.

        Saving all of them (the default), not only the noise ones, lets the store
        record a field that stopped being noise."""
        out = []
        with self._lock:
            for endpoint, ep in self._endpoints.items():
                for name in [n for n, (_r, s) in ep.others.items() if s and n not in ep.fields]:
                    self._field(ep, endpoint, name)
                for name, f in ep.fields.items():
                    n, r, s = ep.totals(name, f)
                    if s == 0:
                        continue
                    self._decide(endpoint, ep, name, f)
                    if f.noise or include_not_noise:
                        out.append(NoiseEvidence(endpoint, name, n, r, s, f.p_value,
                                                 f.noise, f.provisional, f.decided_at))
        out.sort(key=lambda e: (e.endpoint, e.field))
        return out

    def counts(self, endpoint: str, field: str) -> tuple[int, int, int]:
        """(N, R, S) as counted so far, the other learners' included."""
        with self._lock:
            ep = self._endpoints.get(endpoint)
            if ep is None:
                return (0, 0, 0)
            return ep.totals(field, ep.fields.get(field))

    def own_counts(self) -> list[Counts]:
        """This learner's own counts, to save for the others: per endpoint a row with
        field "" (its N), and per field its (R, S) with the endpoint's N."""
        with self._lock:
            out: list[Counts] = []
            for endpoint, ep in self._endpoints.items():
                if not ep.n:
                    continue
                out.append((endpoint, "", ep.n, 0, 0))
                out.extend((endpoint, name, ep.n, f.r, f.s)
                           for name, f in ep.fields.items() if f.r or f.s)
            return out

    def set_others(self, rows: Iterable[Counts]) -> None:
        """The other learners' summed counts (as :meth:`own_counts` gives them, summed
        over learners): they replace what was set before."""
        with self._lock:
            for known in self._endpoints.values():
                known.other_n, known.others = 0, {}
            for endpoint, name, n, r, s in rows:
                ep = self._endpoints.get(endpoint)
                if ep is None:
                    ep = self._endpoints[endpoint] = _Endpoint()
                if name == "":
                    ep.other_n = int(n)
                elif len(ep.others) < MAX_FIELDS_PER_ENDPOINT:
                    ep.others[name] = (int(r), int(s))
