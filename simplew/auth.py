"""JWT on WebSocket messages, as SimpleW's ``SetToken`` does it.

``server.set_token(secret)`` turns it on. A message's token is, first found:

1. the ``"jwt"`` string of the message envelope (SimpleW's carrier);
2. ``Authorization: Bearer <token>`` on the upgrade request (non-browser clients);
3. the ``Sec-WebSocket-Protocol`` of the upgrade request, for browsers, which
   cannot set headers on a WebSocket: ``new WebSocket(url, ["bearer", token])``.
   The server answers the 101 with ``Sec-WebSocket-Protocol: bearer`` (a
   browser fails a connection whose offered protocols get no answer). The
   single value ``"bearer.<token>"`` is accepted too and is echoed back whole.

A controller class decorated with :func:`require_jwt` (or with the class
attribute ``require_jwt = True``), or a method decorated with it, answers only
messages with a valid token (:func:`allow_anonymous` exempts a method); others
get ``{"error": "unauthorized", ...}`` and the connection stays open. The
decoded claims are ``self.jwt`` in the controller and ``message.claims``
(``None`` when there is no valid token).

PyJWT is needed only when a key is set: ``pip install 'simplew[jwt]'``.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from simplew._fast.router import Unauthorized  # raised here, caught by the router

__all__ = [
    "Unauthorized",
    "JwtAuth",
    "require_jwt",
    "allow_anonymous",
    "is_protected",
    "select_subprotocol",
    "token_from_headers",
    "BEARER_PROTOCOL",
]

BEARER_PROTOCOL = "bearer"
REQUIRE_ATTR = "__simplew_require_jwt__"


def require_jwt(obj: Any = None, *, required: bool = True) -> Any:
    """Require a valid JWT for a controller class or one of its WEBSOCKET methods.

    ``@require_jwt`` on a class is the same as ``require_jwt = True`` in its
    body; on a method, it protects that method alone.
    ``@require_jwt(required=False)`` or :func:`allow_anonymous` on a method
    exempts it from its class's rule.
    """

    def mark(target: Any) -> Any:
        if isinstance(target, type):
            setattr(target, "require_jwt", required)  # noqa: B010 (a class attribute)
        else:
            setattr(target, REQUIRE_ATTR, required)
        return target

    if obj is None:
        return mark
    return mark(obj)


def allow_anonymous(func: Any) -> Any:
    """Exempt one method from its class's ``require_jwt`` (ASP.NET's ``[AllowAnonymous]``).

    Inside a class body that says ``require_jwt = True`` the name ``require_jwt``
    is that attribute, not the decorator: use this there.
    """
    setattr(func, REQUIRE_ATTR, False)
    return func


def is_protected(controller_class: type, method: Callable[..., Any]) -> bool:
    """Whether ``method`` of ``controller_class`` needs a valid token."""
    flag = getattr(method, REQUIRE_ATTR, None)
    if flag is None:
        flag = getattr(controller_class, "require_jwt", False)
    return bool(flag)


def select_subprotocol(offer: str) -> str | None:
    """The ``Sec-WebSocket-Protocol`` the server answers to ``offer``, or None.

    ``"bearer, <token>"`` → ``"bearer"``; ``"bearer.<token>"`` → itself.
    """
    for item in offer.split(","):
        item = item.strip()
        if item.lower() == BEARER_PROTOCOL:
            return item
        if item[:7].lower() == "bearer." and len(item) > 7:
            return item
    return None


def bearer_matches(headers: Mapping[str, str], expected: bytes) -> bool:
    """``Authorization: Bearer <token>`` of ``headers`` is ``expected`` (a fixed
    operator token: ``--publish-token``, the API's, the admin page's), compared in
    constant time."""
    scheme, _, given = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8", "replace"), expected
    )


def bearer_challenge(headers: Mapping[str, str], realm: str) -> str:
    """The ``WWW-Authenticate`` of a 401 to a request ``bearer_matches`` refused:
    ``error="invalid_token"`` when it carried credentials (RFC 6750)."""
    challenge = f'Bearer realm="{realm}"'
    if headers.get("authorization", "").partition(" ")[0]:
        challenge += ', error="invalid_token"'
    return challenge


def token_from_headers(headers: dict[str, str]) -> str | None:
    """The bearer token of an upgrade request (headers with lower-case names), or None."""
    value = headers.get("authorization")
    if value:
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    offer = headers.get("sec-websocket-protocol")
    if offer:
        items = [item.strip() for item in offer.split(",")]
        for i, item in enumerate(items):
            if item.lower() == BEARER_PROTOCOL:
                if i + 1 < len(items) and items[i + 1]:
                    return items[i + 1]
            elif item[:7].lower() == "bearer." and len(item) > 7:
                return item[7:]
    return None


class JwtAuth:
    """Validates tokens with PyJWT; what ``server.set_token`` installs.

    Good tokens are cached (by their full text, signature included), so a
    connection that carries one token in its upgrade request is not verified
    again for every message; ``exp`` and ``nbf`` are still checked each time.
    """

    def __init__(
        self,
        key: Any,
        algorithms: Iterable[str] = ("HS256",),
        *,
        issuer: str | None = None,
        audience: str | Iterable[str] | None = None,
        leeway: float = 0.0,
        options: dict[str, Any] | None = None,
        cache_size: int = 4096,
    ) -> None:
        try:
            import jwt
        except ImportError:
            raise ImportError("JWT support needs PyJWT: pip install 'simplew[jwt]'") from None
        if not key:
            raise ValueError("set_token needs a key")
        algorithms = [algorithms] if isinstance(algorithms, str) else list(algorithms)
        if not algorithms or any(a.lower() == "none" for a in algorithms):
            raise ValueError('give the signing algorithms to accept ("none" is refused)')
        _check_algorithms(jwt, algorithms, key)
        self._jwt = jwt
        self.key = key
        self.algorithms = algorithms
        self.issuer = issuer
        self.audience = audience
        self.leeway = float(leeway)
        self.options = dict(options or {})
        self._check_exp = self.options.get("verify_exp", True) is not False
        self._check_nbf = self.options.get("verify_nbf", True) is not False
        self._cache: dict[str, tuple[dict[str, Any], float | None, float | None]] = {}
        self._cache_size = cache_size

    select_subprotocol = staticmethod(select_subprotocol)  # what the endpoints answer

    def decode(self, token: Any) -> dict[str, Any]:
        """The claims of a valid ``token``; raises :class:`Unauthorized` otherwise."""
        if type(token) is not str:
            raise Unauthorized("the jwt must be a string")
        hit = self._cache.get(token)
        if hit is not None:
            claims, exp, nbf = hit
            now = time.time()
            # as PyJWT compares: exp <= now - leeway is expired, nbf > now + leeway not yet
            if self._check_exp and exp is not None and exp <= now - self.leeway:
                del self._cache[token]
                raise Unauthorized("the JWT has expired")
            if self._check_nbf and nbf is not None and nbf > now + self.leeway:
                raise Unauthorized("the JWT is not valid yet")
            return claims
        jwt = self._jwt
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=self.algorithms,
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway,
                options=self.options,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the JWT has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("the JWT is not valid yet") from None
        except jwt.PyJWTError as exc:  # InvalidTokenError, and InvalidKeyError & co.
            raise Unauthorized(f"invalid JWT: {exc}") from None
        if not isinstance(claims, dict):
            raise Unauthorized("invalid JWT: the payload is not an object")
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[token] = (claims, _claim_time(claims, "exp"), _claim_time(claims, "nbf"))
        return claims

    def expiry(self, claims: dict[str, Any]) -> float | None:
        """The Unix time from which ``claims`` (of a valid token) are expired, or None
        when they never are (no ``exp``, or ``verify_exp`` off)."""
        if not self._check_exp:
            return None
        exp = _claim_time(claims, "exp")
        return None if exp is None else exp + self.leeway

    def claims_for(self, message_token: Any, headers: dict[str, str]) -> dict[str, Any]:
        """The claims for a message: its own ``jwt``, else the upgrade request's token.

        Raises :class:`Unauthorized` when there is no token or it is not valid.
        """
        token = message_token
        if token is None or token == "":
            token = token_from_headers(headers)
            if token is None:
                raise Unauthorized(
                    'a valid JWT is required: send it as the message\'s "jwt", in an '
                    'Authorization: Bearer header or as the "bearer" WebSocket subprotocol'
                )
        return self.decode(token)

    def optional_claims(self, message_token: Any, headers: dict[str, str]) -> dict[str, Any] | None:
        """Like :meth:`claims_for`, but None instead of raising (for open routes)."""
        token = message_token
        if token is None or token == "":
            token = token_from_headers(headers)
            if token is None:
                return None
        try:
            return self.decode(token)
        except Unauthorized:
            return None


def _claim_time(claims: dict[str, Any], name: str) -> int | None:
    """``exp`` or ``nbf`` as PyJWT reads it when it validates (``int(value)``, which
    takes ``"1796433253"`` and ``1.5`` too), or None when absent (or, with its check
    turned off, not a number)."""
    if name not in claims:
        return None
    try:
        return int(claims[name])
    except (TypeError, ValueError, OverflowError):
        return None


_HMAC = ("HS256", "HS384", "HS512")


def _check_algorithms(jwt: Any, algorithms: list[str], key: Any) -> None:
    """Refuse, at ``set_token``, a key and algorithms that cannot work together: an
    unknown algorithm (a public-key one without ``cryptography``), HMAC mixed with
    public-key algorithms on one key, or a key an algorithm rejects."""
    from jwt.algorithms import get_default_algorithms, has_crypto

    known = get_default_algorithms()
    unknown = [a for a in algorithms if a not in known]
    if unknown:
        hint = "" if has_crypto else " (public-key algorithms need: pip install cryptography)"
        raise ValueError(f"unknown or unavailable JWT algorithms {unknown}{hint}")
    hmac = [a for a in algorithms if a in _HMAC]
    if hmac and len(hmac) != len(algorithms):
        raise ValueError(
            f"one key cannot serve both HMAC {hmac} and public-key algorithms "
            f"{[a for a in algorithms if a not in _HMAC]}: a public key would be taken as an "
            "HMAC secret; call set_token with one kind"
        )
    for name in algorithms:
        try:
            known[name].prepare_key(key)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise ValueError(f"this key cannot be used with {name}: {exc}") from None
