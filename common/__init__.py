"""Framework-free core of Parity: spec, data, batch plan, init, masks, conversions, metrics, comparison.

Only numpy and the standard library are imported here (a test proves it). Every semantic rule that the
backends must agree on is written once in this package; backends translate it to their native mechanisms.
"""

from common.errors import BackendUnavailable, InputError

__all__ = ["BackendUnavailable", "InputError"]
