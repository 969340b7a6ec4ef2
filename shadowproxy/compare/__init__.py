"""The comparator: pure, synchronous diffing of two captured responses.

Entry points: :class:`Comparator` (reuse one per rule set), :func:`compile_rules`,
:class:`RuleCache` (comparators per route key) and :func:`compare_responses`.
Conventions (paths, kinds, array modes) are documented in :mod:`.comparator`,
:mod:`.jsondiff`, :mod:`.paths`, :mod:`.headers`, :mod:`.text` and :mod:`.rules`.
"""

from .comparator import Comparator, RuleCache, compare_responses
from .rules import CompiledRules, compile_rules

__all__ = ["Comparator", "CompiledRules", "RuleCache", "compare_responses", "compile_rules"]
