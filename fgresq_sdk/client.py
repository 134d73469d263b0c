"""`RemoteScorer`: the `Scorer` API (score, compare, rank) against an `fgresq-sdk serve` server.

Images go to the server as encoded files (paths are read here; PIL images and arrays are decoded here with
the SDK's rules and sent as lossless PNG), one batch per request, a few requests in flight. The server
returns scores and the quality features q; comparisons and rankings are computed here from q with the
bundle's comparison head, which the server hands out once (model `fgresq_info`, checked against the
bundle's sha256 of `heads.npz`). So `rank` of N images costs N server encodes and no per-pair call, and
its results equal a local `Scorer`'s on the same bundle.

Needs `tritonclient` (`pip install 'fgresq-sdk[client]'`; the server side is the `[serve]` extra).
"""
from __future__ import annotations

import base64
import concurrent.futures as cf
import hashlib
import io
import itertools
import json
import os
import threading
import time
from typing import Iterable, Iterator, Sequence
from urllib.parse import urlsplit

import numpy as np

from .errors import FGResQError, InputError
from .heads import CompareHeadNP
from .preprocess import ImageInput, load_image
from .scorer import Encoded, ScoringMethods, _name_of
from .serve import INFO_INPUT, INFO_MODEL, INFO_OUTPUT, INPUT, MODEL, OUTPUTS, PROTOCOL, PROTOCOL_VERSION

DEFAULT_PORTS = {"http": 8000, "https": 8000, "grpc": 8001, "grpcs": 8001}


class RemoteError(FGResQError):
    """The server cannot be reached, is not an fgresq-sdk server, or failed a request."""


def _payload(item: ImageInput, name: str) -> bytes:
    """The bytes to send for one input; InputError (as a local Scorer words it) when it cannot be read."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, (str, os.PathLike)):
        from .preprocess import _open_file

        with _open_file(item, name) as f:
            try:
                return f.read()
            except OSError as exc:
                raise InputError(name, f"cannot read ({exc.strerror or exc})") from None
    img = load_image(item, name)  # PIL image or array: decoded here exactly as a local Scorer does
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class RemoteScorer(ScoringMethods):
    """Score, compare and rank with a remote `fgresq-sdk serve` (Triton) server.

    url: `http://host:8000`, `grpc://host:8001` (or `host:port` with `protocol`); https/grpcs for TLS.
    batch_size: images per request; concurrency: requests in flight per call. One RemoteScorer may be shared
    by threads (each thread gets its own connection). wait_s: wait up to this long for the server to be ready.
    """

    def __init__(self, url: str = "http://127.0.0.1:8000", protocol: str | None = None, *, batch_size: int = 16,
                 concurrency: int = 4, timeout: float = 120.0, wait_s: float = 0.0):
        parts = urlsplit(url if "://" in url else f"{protocol or 'http'}://{url}")
        scheme = parts.scheme.lower()
        if protocol is not None:
            protocol = protocol.lower()
            if protocol not in ("http", "grpc"):
                raise ValueError(f"protocol must be 'http' or 'grpc' (got {protocol!r})")
            if scheme.rstrip("s") != protocol:
                raise ValueError(f"url scheme {scheme!r} does not match protocol {protocol!r}")
        if scheme not in DEFAULT_PORTS:
            raise ValueError(f"unsupported url scheme {scheme!r} (http, https, grpc or grpcs)")
        self.protocol = "grpc" if scheme.startswith("grpc") else "http"
        self.ssl = scheme.endswith("s")
        host = parts.hostname or "127.0.0.1"
        self.address = f"[{host}]:{parts.port or DEFAULT_PORTS[scheme]}" if ":" in host else \
            f"{host}:{parts.port or DEFAULT_PORTS[scheme]}"
        self.url = f"{scheme}://{self.address}"
        self.batch_size = max(1, int(batch_size))
        self.concurrency = max(1, int(concurrency))
        self.timeout = float(timeout)
        self.encoded_images = 0
        self._count_lock = threading.Lock()
        self._local = threading.local()
        self._clients: list = []
        self._clients_lock = threading.Lock()
        self._pool: cf.ThreadPoolExecutor | None = None
        self._module()  # ImportError early, with the extra to install
        if wait_s > 0:
            self.wait_ready(wait_s)
        self.info = self._fetch_info()
        self.feature_dim = 3 * int(self.info["bundle"]["feature_dim"] or self.head.dim // 3)

    # -- transport ---------------------------------------------------------------------------------------
    def _module(self):
        try:
            if self.protocol == "grpc":
                import tritonclient.grpc as mod
            else:
                import tritonclient.http as mod
        except ImportError as exc:
            raise ImportError(f"RemoteScorer needs tritonclient: pip install 'fgresq-sdk[client]' ({exc})") from None
        return mod

    def _client(self):
        c = getattr(self._local, "client", None)
        if c is None:
            mod = self._module()
            if self.protocol == "grpc":
                c = mod.InferenceServerClient(url=self.address, ssl=self.ssl)
            else:
                c = mod.InferenceServerClient(url=self.address, ssl=self.ssl, connection_timeout=self.timeout,
                                              network_timeout=self.timeout)
            self._local.client = c
            with self._clients_lock:
                self._clients.append(c)
        return c

    def _call(self, what: str, fn):
        try:
            return fn()
        except FGResQError:
            raise
        except Exception as exc:  # tritonclient's InferenceServerException, refused connections, timeouts…
            msg = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
            msg = " ".join(str(msg).split()) or type(exc).__name__
            raise RemoteError(f"{self.url}: {what} failed ({msg[:300]})") from None

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until the server says it is ready (its models are loaded); RemoteError after timeout_s."""
        deadline = time.monotonic() + timeout_s
        last = "not ready"
        while True:
            try:
                if self._client().is_server_ready():
                    return
            except Exception as exc:
                last = " ".join(str(exc).split())[:200] or type(exc).__name__
            if time.monotonic() >= deadline:
                raise RemoteError(f"{self.url}: server not ready after {timeout_s:g} s ({last})")
            time.sleep(0.2)

    def _fetch_info(self) -> dict:
        mod = self._module()

        def call():
            inp = mod.InferInput(INFO_INPUT, [1], "BYTES")
            inp.set_data_from_numpy(np.array([b"info"], dtype=object))
            out = [mod.InferRequestedOutput(INFO_OUTPUT, binary_data=True) if self.protocol == "http"
                   else mod.InferRequestedOutput(INFO_OUTPUT)]
            kw = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
            return self._client().infer(INFO_MODEL, [inp], outputs=out, **kw).as_numpy(INFO_OUTPUT)

        raw = self._call(f"reading model '{INFO_MODEL}'", call)
        try:
            info = json.loads(bytes(np.asarray(raw, dtype=object).reshape(-1)[0]).decode("utf-8"))
            assert info.get("protocol") == PROTOCOL
        except Exception:
            raise RemoteError(f"{self.url}: model '{INFO_MODEL}' did not answer as an fgresq-sdk server") from None
        if info.get("protocol_version") != PROTOCOL_VERSION:
            raise RemoteError(f"{self.url}: server speaks {PROTOCOL} version {info.get('protocol_version')}, this "
                              f"client version {PROTOCOL_VERSION}")
        npz = base64.b64decode(info["heads"]["npz_base64"])
        digest = hashlib.sha256(npz).hexdigest()
        want = info["bundle"]["files"]["heads"]["sha256"]
        if digest != info["heads"]["sha256"] or digest != want:
            raise RemoteError(f"{self.url}: the comparison head the server sent does not match its bundle's "
                              f"heads.npz sha256 ({digest[:12]}… vs {want[:12]}…)")
        self.head = CompareHeadNP.from_npz(npz)
        del info["heads"]["npz_base64"]
        return info

    def _infer(self, payloads: list[bytes]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        mod = self._module()
        n = len(payloads)

        def call():
            inp = mod.InferInput(INPUT, [n, 1], "BYTES")
            arr = np.empty((n, 1), dtype=object)
            arr[:, 0] = payloads
            if self.protocol == "http":
                inp.set_data_from_numpy(arr, binary_data=True)
                outs = [mod.InferRequestedOutput(o, binary_data=True) for o in OUTPUTS]
                res = self._client().infer(MODEL, [inp], outputs=outs)
            else:
                inp.set_data_from_numpy(arr)
                outs = [mod.InferRequestedOutput(o) for o in OUTPUTS]
                res = self._client().infer(MODEL, [inp], outputs=outs, client_timeout=self.timeout)
            return res.as_numpy("score"), res.as_numpy("features"), res.as_numpy("error")

        scores, feats, errs = self._call(f"scoring a batch of {n} on model '{MODEL}'", call)
        with self._count_lock:
            self.encoded_images += n
        errors = [bytes(e).decode("utf-8", "replace") for e in np.asarray(errs, dtype=object).reshape(-1)]
        return np.asarray(scores, np.float32).reshape(-1), np.asarray(feats, np.float32).reshape(n, -1), errors

    def _run_batch(self, batch: list[tuple[int, ImageInput, str]]) -> list[Encoded]:
        out: list[Encoded | None] = [None] * len(batch)
        send, where = [], []
        for k, (idx, item, name) in enumerate(batch):
            try:
                send.append(_payload(item, name))
                where.append(k)
            except InputError as exc:
                out[k] = Encoded(idx, name, error=exc.reason)
            except MemoryError:
                out[k] = Encoded(idx, name, error="out of memory while decoding")
        if send:
            scores, feats, errors = self._infer(send)
            for j, k in enumerate(where):
                idx, _, name = batch[k]
                if errors[j]:
                    out[k] = Encoded(idx, name, error=errors[j])
                else:
                    out[k] = Encoded(idx, name, features=feats[j], score=float(scores[j]))
        return out  # type: ignore[return-value]

    # -- the Scorer API ----------------------------------------------------------------------------------
    def iter_encode(self, items: Iterable[ImageInput], names: Sequence[str] | None = None, *,
                    features_only: bool = False) -> Iterator[Encoded]:
        """Encode inputs in order; a bad input yields an Encoded with `error` set, the rest go on. A server
        that cannot be reached or fails a whole request raises RemoteError. features_only changes nothing here:
        the server always returns the scores with the features."""

        def batches():
            cur = []
            for i, item in enumerate(items):
                cur.append((i, item, names[i] if names is not None else _name_of(item, i)))
                if len(cur) == self.batch_size:
                    yield cur
                    cur = []
            if cur:
                yield cur

        pool = self._executor()
        it = batches()
        pending = [pool.submit(self._run_batch, b) for b in itertools.islice(it, self.concurrency)]
        try:
            while pending:
                done = pending.pop(0).result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(self._run_batch, nxt))
                yield from done
        finally:
            for f in pending:
                f.cancel()

    def _executor(self) -> cf.ThreadPoolExecutor:
        """Worker threads kept for the RemoteScorer's life, so their connections are reused."""
        with self._clients_lock:
            if self._pool is None:
                self._pool = cf.ThreadPoolExecutor(self.concurrency, thread_name_prefix="fgresq-remote")
            return self._pool

    def describe(self) -> dict:
        return {"url": self.url, "protocol": self.protocol, "model": self.info["bundle"],
                "backend": self.info.get("backend"), "max_batch_size": self.info.get("max_batch_size")}

    # -- lifecycle -----------------------------------------------------------------------------------------
    def close(self) -> None:
        with self._clients_lock:
            clients, self._clients = self._clients, []
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        for c in clients:
            try:
                c.close()
            except Exception:
                pass
        self._local = threading.local()

    def __enter__(self) -> "RemoteScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
