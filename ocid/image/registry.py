"""A Docker Registry HTTP API v2 client (the OCI distribution spec) on ``requests``.

Auth follows Docker's token scheme: a ``/v2/`` ping answers 401 with a ``WWW-Authenticate``
challenge; ``Bearer`` means "get a token for this scope from the realm", ``Basic`` means "send
the credentials". Insecure registries follow containers/image: try https without
verification, fall back to http, and remember what worked.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO
from urllib.parse import urljoin

import requests
import urllib3

from ocid.errors import (
    FailedPrecondition,
    InternalError,
    InvalidArgument,
    NotFound,
    OcidError,
    Unavailable,
)
from ocid.image.manifest import (
    ALL_MANIFEST_TYPES,
    detect_media_type,
    sha256_digest,
    validate_digest,
)
from ocid.storage.digest import DigestMismatch, new_hash

log = logging.getLogger(__name__)

DOCKER_HUB_HOSTS = ("docker.io", "index.docker.io")
DOCKER_HUB_API = "registry-1.docker.io"
CHUNK = 1 << 20
# Socket read unit for blobs: a broken read loses what it buffered, so resume from a small one.
READ_SIZE = 64 << 10
MAX_MANIFEST_BYTES = 4 << 20  # containers/image's limit; guards against an endless body
MAX_BACKOFF = 10.0
TOKEN_MIN_LIFETIME = 60  # seconds; the token spec's default when expires_in is absent
_ERRNO_RE = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")
_SSL_RE = re.compile(r"\[SSL: [A-Z0-9_]+\] ([^()'\"]+?)\s*\(_ssl")
_CHALLENGE_PART = re.compile(r'([A-Za-z][\w.\-]*)(\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*))?')
_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


class RegistryAuthError(FailedPrecondition):
    """The registry refused our credentials, or wants some and we have none."""


@dataclass(frozen=True, slots=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: scheme ("bearer", "basic") and its parameters."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` header (RFC 7235) into its challenges, in order."""
    parsed: list[tuple[str, dict[str, str]]] = []
    for match in _CHALLENGE_PART.finditer(header):
        name, has_value, value = match.groups()
        if has_value is None:
            parsed.append((name.lower(), {}))
        elif parsed:
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            parsed[-1][1][name.lower()] = value
    return [Challenge(scheme, params) for scheme, params in parsed]


def _pick_challenge(response: requests.Response) -> Challenge | None:
    challenges = parse_challenges(response.headers.get("WWW-Authenticate", ""))
    for scheme in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == scheme:
                return challenge
    return None


def registry_errors(response: requests.Response) -> str:
    """The registry's error text: ``{"errors":[{"code","message"}]}`` joined, or the body."""
    try:
        body = next(response.iter_content(65536), b"")
    except requests.RequestException:
        body = b""
    try:
        errors = json.loads(body).get("errors") or []
        texts = [f"{e.get('message') or e.get('code')} ({e.get('code')})"
                 if e.get("message") and e.get("code") else str(e.get("message") or e.get("code"))
                 for e in errors if isinstance(e, dict)]
        if texts:
            return "; ".join(texts)
    except (ValueError, AttributeError, TypeError):
        pass
    text = body.decode("utf-8", "replace").strip()
    return " ".join(text.split())[:200] if text and not text.startswith("<") else ""


def _error_codes(response: requests.Response, text: str) -> str:
    return f"{response.status_code} {response.reason}" + (f": {text}" if text else "")


def _short_reason(exc: BaseException) -> str:
    """A one-phrase cause for a requests exception (its str() is a nested repr)."""
    if isinstance(exc, requests.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, requests.ReadTimeout):
        return "read timed out"
    if isinstance(exc, requests.exceptions.SSLError):
        match = _SSL_RE.search(str(exc))
        return f"TLS error: {match.group(1) if match else exc}"
    match = _ERRNO_RE.search(str(exc))
    if match:
        return match.group(1).strip().rstrip(".").lower()
    return str(exc)


def _backoff(attempt: int, response: requests.Response | None = None) -> float:
    """Seconds to wait before retry ``attempt`` (0-based); honours a numeric Retry-After."""
    if response is not None:
        after = response.headers.get("Retry-After", "")
        if after.isdigit():
            return min(float(after), MAX_BACKOFF)
    return min(0.5 * 2 ** attempt, MAX_BACKOFF)


DEFAULT_CERTS_DIRS = ("/etc/containers/certs.d", "/etc/docker/certs.d")
SYSTEM_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")


def tls_trust(host: str, certs_dirs: Sequence[str]) -> tuple[str, tuple[str, str] | None]:
    """The CA bundle to verify ``host`` with, and its client certificate, as containers do.

    The system's CAs, plus ``<dir>/<host>/*.crt`` of each certs dir; ``*.cert`` with the
    matching ``*.key`` is the client certificate. requests takes one bundle file, so extra
    CAs are joined with the system's into a file named by its content (written once).
    """
    system = next((p for p in SYSTEM_CA_BUNDLES if os.path.isfile(p)), requests.certs.where())
    extra: list[str] = []
    client: tuple[str, str] | None = None
    for directory in certs_dirs:
        for path in sorted(glob.glob(os.path.join(directory, host, "*"))):
            if path.endswith(".crt"):
                extra.append(path)
            elif path.endswith(".cert") and client is None and os.path.isfile(path[:-5] + ".key"):
                client = (path, path[:-5] + ".key")
    if not extra:
        return system, client
    try:
        content = b"".join(open(p, "rb").read().rstrip(b"\n") + b"\n" for p in [system, *extra])
    except OSError as exc:
        raise InvalidArgument(f"cannot read CA certificates for {host}: {exc}") from exc
    bundle = os.path.join(tempfile.gettempdir(),
                          f"ocid-ca-{hashlib.sha256(content).hexdigest()[:24]}.pem")
    if not os.path.exists(bundle):
        with tempfile.NamedTemporaryFile(dir=os.path.dirname(bundle), delete=False) as tmp:
            tmp.write(content)
        os.replace(tmp.name, bundle)
    return bundle, client


class RegistryClient:
    """A client for one registry host; thread-safe, one connection pool."""

    def __init__(self, host: str, *, insecure: bool = False,
                 credentials: tuple[str, str] | None = None,
                 timeout: tuple[float, float] = (10, 60), retries: int = 3,
                 session: requests.Session | None = None,
                 certs_dirs: Sequence[str] = DEFAULT_CERTS_DIRS):
        self.host = host
        self.api_host = DOCKER_HUB_API if host in DOCKER_HUB_HOSTS else host
        self.insecure = insecure
        self.timeout = timeout
        self.retries = max(0, retries)
        self._credentials = credentials
        self._session = session or requests.Session()
        self._ca_bundle: str | bool = False
        if not insecure:
            self._ca_bundle, self._session.cert = tls_trust(self.api_host, certs_dirs)
        self._scheme: str | None = None
        self._challenge: Challenge | None = None
        self._tokens: dict[str, tuple[str, float]] = {}  # scope -> (token, monotonic expiry)
        self._lock = threading.Lock()
        if insecure:
            # The caller chose not to verify TLS; a warning per request would only be noise.
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

    def close(self) -> None:
        """Close the connections of this client's session."""
        self._session.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        user = f", user={self._credentials[0]!r}" if self._credentials else ""
        return f"RegistryClient({self.host!r}, insecure={self.insecure}{user})"

    # ---- connection, scheme and auth ------------------------------------------------------

    @property
    def _verify(self) -> str | bool:
        return False if self.insecure else self._ca_bundle

    def _base(self) -> str:
        """``scheme://api-host``, pinging ``/v2/`` once to learn the scheme and challenge."""
        with self._lock:
            if self._scheme is None:
                self._discover()
            return f"{self._scheme}://{self.api_host}"

    def _discover(self) -> requests.Response:
        """Ping ``/v2/`` over https (then http if insecure); remember what answered."""
        schemes = ("https", "http") if self.insecure else ("https",)
        reasons: dict[str, str] = {}
        last_exc: Exception | None = None
        for attempt in range(self.retries + 1):
            for scheme in schemes:
                try:
                    response = self._session.get(f"{scheme}://{self.api_host}/v2/",
                                                 timeout=self.timeout, verify=self._verify)
                except requests.exceptions.SSLError as exc:
                    if not self.insecure:
                        raise Unavailable(
                            f"TLS connection to registry {self.host} failed: {_short_reason(exc)}; "
                            "if it serves plain HTTP or a self-signed certificate, mark it "
                            "insecure") from exc
                    reasons[scheme], last_exc = _short_reason(exc), exc
                    continue
                except (requests.ConnectionError, requests.Timeout) as exc:
                    reasons[scheme], last_exc = _short_reason(exc), exc
                    continue
                response.close()
                self._scheme = scheme
                if response.status_code == 401:
                    self._challenge = _pick_challenge(response)
                log.debug("registry %s: %s, ping %s, auth %s", self.host, scheme,
                          response.status_code, self._challenge and self._challenge.scheme)
                return response
            if attempt < self.retries:
                time.sleep(_backoff(attempt))
        tried = "; ".join(f"{s}: {r}" for s, r in reasons.items())
        raise Unavailable(f"registry {self.host} is not reachable ({tried})") from last_exc

    def _basic(self) -> str:
        assert self._credentials is not None
        user, password = self._credentials
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def _auth_failed(self, response: requests.Response, detail: str = "") -> RegistryAuthError:
        hint = "" if self._credentials else " (no credentials given)"
        text = detail or registry_errors(response)
        return RegistryAuthError(f"authentication to {self.host} failed: "
                                 f"{_error_codes(response, text)}{hint}")

    def _fetch_token(self, challenge: Challenge, scope: str) -> tuple[str, float]:
        """Get a bearer token for ``scope`` ("" for none) from the challenge's realm."""
        realm = challenge.params.get("realm")
        if not realm:
            raise RegistryAuthError(f"registry {self.host} asks for a bearer token but names "
                                    "no realm")
        params: list[tuple[str, str]] = []
        if challenge.params.get("service"):
            params.append(("service", challenge.params["service"]))
        params += [("scope", s) for s in scope.split()]
        auth = None
        if self._credentials:
            params.append(("account", self._credentials[0]))
            auth = self._credentials
        try:
            response = self._session.get(realm, params=params, auth=auth, timeout=self.timeout,
                                         verify=self._verify)
        except requests.RequestException as exc:
            raise Unavailable(f"token server {realm} of registry {self.host} is not reachable: "
                              f"{_short_reason(exc)}") from exc
        with response:
            if response.status_code in (401, 403):
                raise self._auth_failed(response)
            if response.status_code != 200:
                raise Unavailable(f"token server {realm} of registry {self.host} answered "
                                  f"{_error_codes(response, registry_errors(response))}")
            try:
                data: dict[str, Any] = response.json()
                token = data.get("token") or data.get("access_token")
                lifetime = max(int(data.get("expires_in") or 0), TOKEN_MIN_LIFETIME)
            except (ValueError, AttributeError, TypeError) as exc:
                raise RegistryAuthError(f"token server {realm} of registry {self.host} sent "
                                        "an unreadable answer") from exc
        if not isinstance(token, str) or not token:
            raise RegistryAuthError(f"token server {realm} of registry {self.host} sent no token")
        # Refresh a little early so a token does not expire in flight.
        return token, time.monotonic() + lifetime - 10

    def _authorization(self, scope: str, *, fresh: bool = False) -> str | None:
        """The Authorization header value for a request needing ``scope``, if any."""
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return self._basic() if self._credentials else None
        if challenge.scheme != "bearer":
            return None
        with self._lock:
            cached = self._tokens.get(scope)
        if fresh or cached is None or cached[1] <= time.monotonic():
            # After a 401 the registry's challenge may name the exact scope it wants.
            wanted = challenge.params.get("scope", scope) if fresh else scope
            cached = self._fetch_token(challenge, wanted)
            with self._lock:
                self._tokens[scope] = cached
        return f"Bearer {cached[0]}"

    # ---- requests -------------------------------------------------------------------------

    def _send(self, method: str, url: str, scope: str, *, headers: dict[str, str] | None = None,
              body: Callable[[], Any] | None = None, params: dict[str, str] | None = None,
              stream: bool = False) -> requests.Response:
        """One request, answering a 401 challenge once (new token or credentials)."""
        for fresh in (False, True):
            all_headers = dict(headers or {})
            authorization = self._authorization(scope, fresh=fresh)
            if authorization:
                all_headers["Authorization"] = authorization
            data = body() if body else None
            try:
                response = self._session.request(
                    method, url, headers=all_headers, data=data, params=params, stream=stream,
                    timeout=self.timeout, verify=self._verify, allow_redirects=True)
            finally:
                if hasattr(data, "close"):
                    data.close()  # an opened file: requests does not close what it is given
            if response.status_code != 401 or fresh:
                return response
            challenge = _pick_challenge(response)
            if challenge is None or (challenge.scheme == "basic" and not self._credentials):
                return response
            if challenge.scheme == "basic" and self._challenge == challenge:
                return response  # the credentials we sent were refused; sending again won't help
            response.close()
            self._challenge = challenge
        raise AssertionError("unreachable")

    def _request(self, method: str, path: str, repository: str | None, *, push: bool = False,
                 headers: dict[str, str] | None = None, body: Callable[[], Any] | None = None,
                 params: dict[str, str] | None = None, stream: bool = False,
                 ok: tuple[int, ...] = (200,), retry: bool = True, what: str = "",
                 missing: str | None = None) -> requests.Response:
        """Send with retries on connection errors, 429 and 5xx; map failures to ocid errors.

        ``path`` is ``/v2/...`` or an absolute URL (upload locations); ``missing`` is the
        NotFound message for a 404.
        """
        url = path if "://" in path else self._base() + path
        scope = f"repository:{repository}:{'pull,push' if push else 'pull'}" if repository else ""
        what = what or f"{method} {path}"
        attempts = self.retries + 1 if retry else 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = self._send(method, url, scope, headers=headers, body=body,
                                      params=params, stream=stream)
            except requests.exceptions.SSLError as exc:
                raise Unavailable(f"TLS error talking to registry {self.host} ({what}): "
                                  f"{_short_reason(exc)}") from exc
            except (requests.ConnectionError, requests.Timeout) as exc:
                if last:
                    raise Unavailable(f"registry {self.host} is not reachable ({what}): "
                                      f"{_short_reason(exc)}") from exc
                log.debug("registry %s: %s: %s; retrying", self.host, what, _short_reason(exc))
                time.sleep(_backoff(attempt))
                continue
            except requests.RequestException as exc:
                raise Unavailable(f"request to registry {self.host} failed ({what}): "
                                  f"{_short_reason(exc)}") from exc
            status = response.status_code
            if status in ok:
                return response
            if (status == 429 or status >= 500) and not last:
                log.debug("registry %s: %s answered %s; retrying", self.host, what, status)
                response.close()
                time.sleep(_backoff(attempt, response))
                continue
            with response:
                raise self._error(response, what, missing)
        raise AssertionError("unreachable")

    def _error(self, response: requests.Response, what: str, missing: str | None) -> OcidError:
        """The ocid error for a failed registry answer."""
        text = registry_errors(response)
        status = response.status_code
        if status == 401:
            return self._auth_failed(response, text)
        if status == 403:
            return RegistryAuthError(f"access to {what} on {self.host} denied: "
                                     f"{_error_codes(response, text)}")
        if status == 404:
            found = f"{missing} not found" if missing else f"{what} on {self.host}: not found"
            return NotFound(found + (f": {text}" if text else ""))
        if status == 429 or status >= 500:
            return Unavailable(f"registry {self.host} failed ({what}): "
                               f"{_error_codes(response, text)}")
        if status in (400, 411, 413, 415, 416):
            return InvalidArgument(f"registry {self.host} rejected {what}: "
                                   f"{_error_codes(response, text)}")
        if status == 405:
            return FailedPrecondition(f"registry {self.host} does not allow {what}: "
                                      f"{_error_codes(response, text)}")
        return InternalError(f"registry {self.host} answered {what} with "
                             f"{_error_codes(response, text)}")

    # ---- the API --------------------------------------------------------------------------

    def ping(self) -> None:
        """Check that the registry answers and, when credentials are given, accepts them."""
        with self._lock:
            response = self._discover()
        status = response.status_code
        if status == 200 or (status == 401 and not self._credentials):
            return  # anonymous access is decided per repository, not at /v2/
        if status != 401:
            raise self._error(response, "GET /v2/", None)
        if self._challenge is None:
            raise self._auth_failed(response, "no usable WWW-Authenticate challenge")
        self._request("GET", "/v2/", None, what="GET /v2/")

    def _name(self, repository: str, reference: str) -> str:
        sep = "@" if ":" in reference else ":"
        return f"{self.host}/{repository}{sep}{reference}"

    def get_manifest(self, repository: str, reference: str,
                     accept: tuple[str, ...] = ALL_MANIFEST_TYPES) -> tuple[bytes, str, str]:
        """Fetch a manifest or index by tag or digest: (raw bytes, media type, digest)."""
        by_digest = ":" in reference
        if by_digest:
            validate_digest(reference)
        name = self._name(repository, reference)
        response = self._request("GET", f"/v2/{repository}/manifests/{reference}", repository,
                                 headers={"Accept": ", ".join(accept)}, stream=True,
                                 what=f"GET manifest {name}", missing=f"manifest for {name}")
        with response:
            body = bytearray()
            try:
                for piece in response.iter_content(READ_SIZE):
                    body += piece
                    if len(body) > MAX_MANIFEST_BYTES:
                        raise InvalidArgument(f"manifest {name} is larger than "
                                              f"{MAX_MANIFEST_BYTES} bytes")
            except requests.RequestException as exc:
                raise Unavailable(f"reading manifest {name} from {self.host} failed: "
                                  f"{_short_reason(exc)}") from exc
            raw = bytes(body)
        declared = response.headers.get("Content-Type")
        if by_digest:
            hasher = new_hash(reference)
            hasher.update(raw)
            actual = f"{reference.partition(':')[0]}:{hasher.hexdigest()}"
            if actual != reference:
                raise DigestMismatch(f"manifest {name}", reference, actual)
            digest = reference
        else:
            digest = sha256_digest(raw)
            header = response.headers.get("Docker-Content-Digest", "")
            if header.startswith("sha256:") and header != digest:
                raise DigestMismatch(f"manifest {name}", header, digest)
        return raw, detect_media_type(raw, declared), digest

    def blob_size(self, repository: str, digest: str) -> int | None:
        """The size of a blob in the repository, or None if it is not there (HEAD)."""
        validate_digest(digest)
        try:
            response = self._request("HEAD", f"/v2/{repository}/blobs/{digest}", repository,
                                     what=f"HEAD blob {digest} in {self.host}/{repository}",
                                     missing=f"blob {digest} in {self.host}/{repository}")
        except NotFound:
            return None
        with response:
            length = response.headers.get("Content-Length", "")
        return int(length) if length.isdigit() else None

    def iter_blob(self, repository: str, digest: str, size: int | None = None,
                  chunk_size: int = CHUNK) -> Iterator[bytes]:
        """Stream a blob; a broken transfer resumes with a Range request (caller checks digest)."""
        validate_digest(digest)
        where = f"blob {digest} in {self.host}/{repository}"
        offset, failures = 0, 0  # offset: bytes received, yielded or in buffer
        buffer = bytearray()
        while True:
            # identity: a transparently gunzipped body would not match its digest
            headers = {"Accept-Encoding": "identity"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
            response = self._request("GET", f"/v2/{repository}/blobs/{digest}", repository,
                                     headers=headers, stream=True, ok=(200, 206),
                                     what=f"GET {where}", missing=where)
            try:
                skip = offset if response.status_code == 200 else 0  # Range ignored
                if response.status_code == 206 and not response.headers.get(
                        "Content-Range", "").startswith(f"bytes {offset}-"):
                    raise Unavailable(f"registry {self.host} resumed {where} at the wrong "
                                      f"offset ({response.headers.get('Content-Range')!r})")
                for piece in response.iter_content(min(chunk_size, READ_SIZE)):
                    if skip:
                        dropped = min(skip, len(piece))
                        piece, skip = piece[dropped:], skip - dropped
                    offset += len(piece)
                    buffer += piece
                    if len(buffer) >= chunk_size:
                        yield bytes(buffer)
                        buffer.clear()
                if size is None or offset >= size:
                    if buffer:
                        yield bytes(buffer)
                    return
                reason = f"connection closed at byte {offset} of {size}"
            except requests.RequestException as exc:
                reason = _short_reason(exc)
                cause: Exception | None = exc
            else:
                cause = None
            finally:
                response.close()
            failures += 1
            if failures > self.retries:
                raise Unavailable(f"download of {where} failed at byte {offset}: {reason}") \
                    from cause
            log.info("download of %s interrupted at byte %d (%s); resuming", where, offset, reason)
            time.sleep(_backoff(failures - 1))

    def push_blob(self, repository: str, digest: str, size: int,
                  open_stream: Callable[[], BinaryIO], chunk_size: int | None = None) -> bool:
        """Upload a blob unless the repository has it; False when skipped.

        The whole upload (POST, then PUT or PATCHes + PUT) is retried on Unavailable, since a
        broken upload session cannot be continued portably.
        """
        if self.blob_size(repository, digest) is not None:
            return False
        for attempt in range(self.retries + 1):
            try:
                self._upload(repository, digest, size, open_stream, chunk_size)
                return True
            except Unavailable as exc:
                if attempt == self.retries:
                    raise
                log.info("upload of blob %s to %s/%s failed (%s); retrying", digest, self.host,
                         repository, exc)
                time.sleep(_backoff(attempt))
        raise AssertionError("unreachable")

    def _upload(self, repository: str, digest: str, size: int,
                open_stream: Callable[[], BinaryIO], chunk_size: int | None) -> None:
        where = f"blob {digest} to {self.host}/{repository}"
        response = self._request("POST", f"/v2/{repository}/blobs/uploads/", repository,
                                 push=True, ok=(202,), retry=False, what=f"start upload of {where}")
        with response:
            if not response.headers.get("Location"):
                raise InternalError(f"registry {self.host} started an upload of {where} "
                                    "without a Location")
            location = urljoin(response.url, response.headers["Location"])
        octets = {"Content-Type": "application/octet-stream"}
        if chunk_size is None:
            # open_stream is called per attempt: a 401 retry must send the body again
            with self._request("PUT", location, repository, push=True, params={"digest": digest},
                               headers=octets, body=open_stream,
                               ok=(201,), retry=False, what=f"upload of {where}"):
                return
        with open_stream() as stream:
            offset = 0
            while chunk := stream.read(chunk_size):
                headers = {**octets, "Content-Range": f"{offset}-{offset + len(chunk) - 1}"}
                response = self._request("PATCH", location, repository, push=True,
                                         headers=headers, body=lambda c=chunk: c, ok=(202,),
                                         retry=False, what=f"upload of {where} at byte {offset}")
                with response:
                    location = urljoin(response.url, response.headers.get("Location", location))
                offset += len(chunk)
        if offset != size:
            raise InvalidArgument(f"blob {digest}: the stream gave {offset} bytes, expected {size}")
        with self._request("PUT", location, repository, push=True, params={"digest": digest},
                           ok=(201,), retry=False,
                           what=f"completion of upload of {where}"):
            return

    def put_manifest(self, repository: str, reference: str, raw: bytes, media_type: str) -> str:
        """Upload a manifest under a tag or digest; returns its digest."""
        digest = sha256_digest(raw)
        if ":" in reference and reference != digest:
            raise DigestMismatch(f"manifest for {self._name(repository, reference)}",
                                 reference, digest)
        name = self._name(repository, reference)
        response = self._request("PUT", f"/v2/{repository}/manifests/{reference}", repository,
                                 push=True, headers={"Content-Type": media_type},
                                 body=lambda: raw, ok=(200, 201), what=f"PUT manifest {name}",
                                 missing=f"repository for {name}")
        with response:
            header = response.headers.get("Docker-Content-Digest", "")
        if header.startswith("sha256:") and header != digest:
            raise DigestMismatch(f"manifest {name} as stored by the registry", digest, header)
        return digest

    def list_tags(self, repository: str) -> list[str]:
        """Every tag of the repository, following ``Link`` pagination."""
        tags: list[str] = []
        path: str | None = f"/v2/{repository}/tags/list"
        while path:
            response = self._request("GET", path, repository,
                                     what=f"list tags of {self.host}/{repository}",
                                     missing=f"repository {self.host}/{repository}")
            with response:
                try:
                    tags += [str(t) for t in (response.json().get("tags") or [])]
                except (ValueError, AttributeError) as exc:
                    raise InternalError(f"registry {self.host} sent an unreadable tag list for "
                                        f"{repository}") from exc
                match = _LINK_NEXT.search(response.headers.get("Link", ""))
                path = urljoin(response.url, match.group(1)) if match else None
        return tags
