"""Errors split by who must act.

`UserError` is for people: one sentence that names the problem and the fix. The CLI prints it
without a traceback and exits 2 (set FACTFLOW_DEBUG=1 to see the traceback). Errors meant for the
model (bad tool arguments, unparseable output) are not raised at all: they become observations.
"""

from __future__ import annotations

__all__ = ["UserError", "format_validation_error"]


class UserError(Exception):
    """A problem the user can fix: bad settings, a missing model, an unreachable server."""


def format_validation_error(exc: object, prefix: str = "FACTFLOW_") -> str:
    """One line per invalid field of a pydantic ValidationError, naming the setting to change."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return str(exc)
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err.get("loc", ()))
        value = err.get("input")
        shown = f"={value!r}" if value is not None and not isinstance(value, dict) else ""
        # env names are FACTFLOW_MAX_NEW_TOKENS, CLI options --max-new-tokens
        name = field.replace("_", "-") if prefix == "--" else field.upper()
        parts.append(f"invalid setting {prefix}{name}{shown}: {err.get('msg')}")
    return "; ".join(parts)
