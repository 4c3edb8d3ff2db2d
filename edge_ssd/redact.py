"""The one masking function for secrets in text: every log line, JSON field, status message, error and doctor
line that may hold a URL or a password goes through :func:`mask`.

- URL credentials: ``rtsp://user:secret@cam/stream`` -> ``rtsp://user:***@cam/stream``; a lone user-info
  (``https://TOKEN@host``, often a token) -> ``https://***@host``;
- secret query/option values: ``?password=x``, ``&token=x``, ``password: x``, ``--password x`` -> ``***``.
"""

from __future__ import annotations

import re

MASK = "***"
# scheme://userinfo@ : userinfo runs to the LAST '@' before the path, so an unencoded '@' in a password is covered
_URL_CRED = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<info>[^/\s?#]*)@")
_KEYS = r"(?:password|passwd|pwd|pass|token|secret|api[_-]?key|access[_-]?key|auth)"
_QUERY = re.compile(rf"(?P<k>[?&;]{_KEYS}=)[^&#\s]*", re.IGNORECASE)
_OPT_KEYS = r"(?:password|passwd|token|secret|api[_-]?key)"
_OPTION = re.compile(rf"(?P<k>(?:--{_OPT_KEYS}[ =]|\b{_OPT_KEYS}['\"]?\s*[:=]\s*)['\"]?)(?!\*\*\*)[^\s'\",}}]+",
                     re.IGNORECASE)


def _cred(m: re.Match) -> str:
    info = m.group("info")
    if info == MASK or info.endswith(":" + MASK):
        return m.group(0)
    if ":" in info:
        return f"{m.group('scheme')}{info.split(':', 1)[0]}:{MASK}@"
    return f"{m.group('scheme')}{MASK}@"


def mask(text: object) -> str:
    """``text`` (anything; str() is taken) with URL passwords and secret values replaced by ``***``."""
    s = str(text)
    if "@" in s:
        s = _URL_CRED.sub(_cred, s)
    if "=" in s or ":" in s or "--" in s:
        s = _QUERY.sub(lambda m: m.group("k") + MASK, s)
        s = _OPTION.sub(lambda m: m.group("k") + MASK, s)
    return s
