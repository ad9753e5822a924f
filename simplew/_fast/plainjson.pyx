# cython: language_level=3
"""JSON exactly as the standard library reads and writes it, at msgspec's speed.

:func:`decode_json` reads envelopes and REST bodies as ``json.loads`` would,
except for what is not JSON: ``NaN``, ``Infinity`` and numbers too large for a
float (``1e999``) are refused, as msgspec refuses them.
:func:`plain` tells which values msgspec writes byte for byte as the standard
library does.

simplew answers with compact JSON, non-ASCII kept (``json.dumps(...,
separators=(",", ":"), ensure_ascii=False)``). msgspec writes that several
times faster, and identically for *plain* values: dicts with ``str`` keys,
lists, ``str``, ``int``, ``bool``, ``None``, and floats both libraries print
without an exponent (finite, 1e-4 <= |x| < 1e16, or 0), nested at most 32
deep. Anything else goes through the standard library encoder.
"""
import json
import math

import msgspec

cdef object _fast_loads = msgspec.json.Decoder().decode
cdef object _MsgspecError = msgspec.MsgspecError
cdef object _json_loads = json.loads
cdef object _json_dumps = json.dumps
cdef object _isfinite = math.isfinite


def _no_constant(name):
    raise ValueError(f"{name} is not JSON (numbers must be finite)")


def _finite_float(text):
    value = float(text)
    if not _isfinite(value):
        raise ValueError(f"{text} is out of range for a float (numbers must be finite)")
    return value


def decode_json(data):
    """``data`` decoded as ``json.loads`` would, without non-finite numbers, or a ValueError.

    msgspec's C decoder answers first; what it refuses (its grammar is stricter:
    NaN, lone surrogates, huge exponents, UTF-16 bytes...) ``json.loads`` decides,
    so what is accepted and every error text stay the stdlib's, except that
    ``NaN``, ``Infinity``, ``-Infinity`` and a number that overflows a float are
    refused with a ``ValueError`` (no JSON parser but Python's takes them, and
    they could only be answered as invalid JSON).
    """
    try:
        return _fast_loads(data)
    except _MsgspecError:
        return _json_loads(data, parse_constant=_no_constant, parse_float=_finite_float)


def has_lone_surrogate(value):
    """Whether decoded JSON holds a lone surrogate (only a \\uD800-\\uDFFF escape,
    or UTF-16/32 input, makes one): no handler could send it on as UTF-8 text."""
    try:
        _json_dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


cdef enum:
    MAX_DEPTH = 32


cdef bint _plain(object value, int depth) except -1:
    cdef type kind = type(value)
    cdef double x
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is float:
        x = value
        return -1e16 < x < 1e16 and (x >= 1e-4 or x <= -1e-4 or x == 0)
    if depth > MAX_DEPTH:
        return False
    if kind is dict:
        for k, v in (<dict>value).items():
            if type(k) is not str or not _plain(v, depth + 1):
                return False
        return True
    if kind is list:
        for v in <list>value:
            if not _plain(v, depth + 1):
                return False
        return True
    return False


cpdef bint plain(object value) except -1:
    """Whether msgspec writes ``value`` as the standard library encoder does."""
    return _plain(value, 0)
