"""The control token of the operations app: where it comes from and how a browser gets it.

It is never printed and never on a command line (`ps` shows every user the arguments).
`apis web` takes it from `$APIS_WEB_TOKEN` or from a file that only its owner may read; with
neither, it writes a new random one to the file (mode 0600) and says where. A browser gets it
through a one-time login link: `http://host:port/#login=CODE`, whose page trades the code for
the token (`POST /api/login`) and keeps it in the tab's session storage. A code works once,
within `LOGIN_CODE_TTL_S` real seconds; the fragment is never sent in a request line, so no
access log or proxy sees it.
"""

from __future__ import annotations

import os
import secrets
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

TOKEN_ENV = "APIS_WEB_TOKEN"
LOGIN_CODE_TTL_S = 600.0
MIN_TOKEN_LENGTH = 16


def new_token() -> str:
    return secrets.token_urlsafe(24)


def default_token_file(environ: Mapping[str, str] | None = None) -> Path:
    """`$XDG_STATE_HOME/apis/web-token` (default `~/.local/state/apis/web-token`)."""
    env = os.environ if environ is None else environ
    state = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "apis" / "web-token"


class TokenError(ValueError):
    """The token cannot be had as configured; the message names the file or variable."""


@dataclass(frozen=True)
class ControlToken:
    value: str
    source: str  # where it is, for the operator: never the value

    def __repr__(self) -> str:  # keeps it out of tracebacks and logs
        return f"ControlToken(source={self.source!r})"


def _check(value: str, where: str) -> str:
    if len(value) < MIN_TOKEN_LENGTH:
        raise TokenError(f"{where}: token of {len(value)} characters (must be at least "
                         f"{MIN_TOKEN_LENGTH})")
    if any(c.isspace() for c in value):
        raise TokenError(f"{where}: the token contains white space (must be one word)")
    return value


def read_token_file(path: Path) -> str:
    """The token in `path` (one line); refused if group or others may read or write it."""
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as e:
        raise TokenError(f"{path}: {e.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenError(f"{path}: mode {stat.S_IMODE(mode):04o} lets other users read it "
                         f"(must be 0600: chmod 600 {path})")
    return _check(text.strip(), str(path))


def write_new_token(path: Path) -> str:
    """A new random token in a new file `path` (mode 0600; its folder made 0700 if new)."""
    value = new_token()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise TokenError(f"{path}: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


def control_token(token_file: Path | None, environ: Mapping[str, str] | None = None
                  ) -> ControlToken:
    """The token from `token_file` if given (created there if it does not exist), else from
    `$APIS_WEB_TOKEN`, else from the default file (created if it does not exist)."""
    env = os.environ if environ is None else environ
    if token_file is None and env.get(TOKEN_ENV):
        return ControlToken(_check(env[TOKEN_ENV].strip(), f"${TOKEN_ENV}"), f"${TOKEN_ENV}")
    path = token_file if token_file is not None else default_token_file(env)
    if path.exists():
        return ControlToken(read_token_file(path), f"{path}")
    return ControlToken(write_new_token(path), f"{path} (new, mode 0600)")


class LoginCodes:
    """One-time codes, each good for one trade against the token within the time to live."""

    def __init__(self, ttl_s: float = LOGIN_CODE_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._codes: dict[str, float] = {}  # code -> monotonic expiry

    def issue(self) -> str:
        now = time.monotonic()
        self._codes = {c: t for c, t in self._codes.items() if t > now}
        code = secrets.token_urlsafe(24)
        self._codes[code] = now + self.ttl_s
        return code

    def redeem(self, code: str) -> bool:
        """True once for a code issued less than `ttl_s` ago; the code is spent either way."""
        expiry = self._codes.pop(code, None)
        return expiry is not None and expiry > time.monotonic()
