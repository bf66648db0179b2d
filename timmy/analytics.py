"""``timmy.analytics``: the public name of `timmy.analysis.queries` (the very same module)."""

import sys

from timmy.analysis import queries

sys.modules[__name__] = queries
