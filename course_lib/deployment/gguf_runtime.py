"""Run an exported GGUF file where people deploy it: llama.cpp in this process, or its OpenAI-compatible server.

llama.cpp comes from `llama-cpp-python`, which compiles llama.cpp when it is installed (minutes on a laptop), so it
lives in the `serve` extra: `pip install -e ".[serve]"`. Everything here says so clearly when it is missing.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

SERVE_EXTRA = 'pip install -e ".[serve]"  (llama-cpp-python[server] and openai; compiles llama.cpp, minutes)'


def llama_cpp_available() -> bool:
    """Whether llama-cpp-python (with its server) and the openai client are installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("llama_cpp", "openai", "uvicorn"))


def require_llama_cpp() -> None:
    """Raise a clear error naming the extra to install when llama.cpp is not available."""
    if not llama_cpp_available():
        raise ModuleNotFoundError(f"llama.cpp is not installed here; install the serve extra: {SERVE_EXTRA}")


def cpu_threads() -> int:
    """Threads for llama.cpp: the cores this process may use (llama.cpp's own default counts every core)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def cpu_has_amx() -> bool:
    """Whether this CPU reports Intel AMX (read from /proc/cpuinfo; False where there is none)."""
    try:
        return " amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@contextlib.contextmanager
def safe_llama_params():
    """Load llama.cpp models without its extra CPU buffer types on AMX CPUs, where they crash.

    llama.cpp repacks quantized weights into an AMX buffer when the CPU has AMX; with llama-cpp-python 0.3.36 the
    first matrix product there dies with a general protection fault (llama.cpp issue 20824). Plain CPU buffers run
    the same file correctly. Elsewhere nothing changes: repacking is a speed-up on AVX2 laptops.
    """
    import llama_cpp  # lazy: compiled, optional, and slow to import

    if not cpu_has_amx():
        yield
        return
    original = llama_cpp.llama_cpp.llama_model_default_params

    def without_extra_buffers():
        params = original()
        params.use_extra_bufts = False
        return params

    llama_cpp.llama_cpp.llama_model_default_params = without_extra_buffers
    try:
        yield
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = original


# ------------------------------------------------------------------------------------------ in this process


@dataclass(frozen=True)
class LlamaRun:
    """Greedy answers of one GGUF file in llama.cpp, with its load time and generation speed."""

    replies: list[str]
    load_s: float
    generate_s: float
    completion_tokens: int

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second over the whole test set (prompt processing included)."""
        return self.completion_tokens / self.generate_s if self.generate_s else 0.0


def load_llama(path: str | Path, n_ctx: int = 1024, vocab_only: bool = False):
    """A llama.cpp model (llama_cpp.Llama) for the file, quiet, on this process's CPU threads."""
    require_llama_cpp()
    import llama_cpp  # lazy: compiled, optional, and slow to import

    with safe_llama_params():
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=cpu_threads(), vocab_only=vocab_only,
                               verbose=False)


def llama_tokenize(path: str | Path, text: str) -> list[int]:
    """The token ids llama.cpp makes of `text` with the file's own tokenizer (special tokens parsed)."""
    return load_llama(path, vocab_only=True).tokenize(text.encode("utf-8"), add_bos=False, special=True)


def llama_answers(path: str | Path, conversations: Sequence[Sequence[dict]], max_tokens: int = 48) -> LlamaRun:
    """Greedy chat answers from the file in llama.cpp, with the chat template and stop token the file carries."""
    started = time.perf_counter()
    llm = load_llama(path)
    load_s = time.perf_counter() - started
    replies, tokens = [], 0
    started = time.perf_counter()
    for messages in conversations:
        out = llm.create_chat_completion(messages=list(messages), temperature=0.0, top_k=1, repeat_penalty=1.0,
                                         max_tokens=max_tokens, seed=0)
        replies.append(out["choices"][0]["message"]["content"] or "")
        tokens += out["usage"]["completion_tokens"]
    return LlamaRun(replies, load_s, time.perf_counter() - started, tokens)


# ------------------------------------------------------------------------------------------ the server


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child before exec (Linux): the kernel ends the server with us
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class LlamaServer:
    """llama.cpp's OpenAI-compatible server on 127.0.0.1, as a subprocess that cannot outlive this one.

    Use it with `with`, or call stop(): it is also stopped when the interpreter exits and, on Linux, when the
    kernel that started it dies (a failed notebook cell, a crashed kernel), so no server is left behind.
    """

    def __init__(self, gguf_path: str | Path, alias: str = "course-model", n_ctx: int = 2048,
                 port: int | None = None, startup_timeout: float = 120.0):
        require_llama_cpp()
        self.path = Path(gguf_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no GGUF file at {self.path}")
        self.alias, self.n_ctx, self.startup_timeout = alias, n_ctx, startup_timeout
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None
        self._log = None

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible address, for `openai.OpenAI(base_url=...)`."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "LlamaServer":
        """Start the server and wait until it answers (raising with its log if it dies or times out)."""
        self._log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)
        command = [sys.executable, "-m", __name__, "--model", str(self.path), "--model_alias", self.alias,
                   "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx),
                   "--n_threads", str(cpu_threads()), "--logits_all", "False", "--verbose", "False"]
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        atexit.register(self.stop)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the llama.cpp server exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                with _no_proxy().open(f"{self.base_url}/models", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"the llama.cpp server did not answer within {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the server printed."""
        if self._log is None:
            return ""
        text = Path(self._log.name).read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s); safe to call twice."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            Path(self._log.name).unlink(missing_ok=True)
            self._log = None

    def client(self, timeout: float = 300.0):
        """An `openai.OpenAI` client for this server (no API key, no proxy)."""
        import httpx
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key="not-needed", max_retries=0,
                             http_client=httpx.Client(trust_env=False, timeout=timeout))

    def __enter__(self) -> "LlamaServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _no_proxy() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback never goes through a proxy


# ------------------------------------------------------------------------------------------ requests


@dataclass(frozen=True)
class Answer:
    """One answered request: the reply, its latency, and the tokens generated."""

    reply: str
    seconds: float
    completion_tokens: int


# llama-cpp-python's server samples with repeat_penalty 1.1 unless a request says otherwise; the model was evaluated
# without one, and a penalty on repeated tokens breaks exact copies (JSON repeats quotes and commas all the time).
SERVER_DEFAULTS = {"repeat_penalty": 1.0}


def ask(client, request: dict) -> Answer:
    """Send one chat-completion request (a dict of its fields) and time it."""
    body = {**SERVER_DEFAULTS, **request}
    model, messages = body.pop("model"), body.pop("messages")
    started = time.perf_counter()
    # Every other field travels as JSON as it is: llama.cpp's extensions (the schema in response_format,
    # repeat_penalty) are not in the openai client's signature.
    out = client.chat.completions.create(model=model, messages=messages, extra_body=body)
    return Answer(out.choices[0].message.content or "", time.perf_counter() - started, out.usage.completion_tokens)


@dataclass(frozen=True)
class LoadReport:
    """Latency and throughput of a batch of requests sent `concurrency` at a time."""

    requests: int
    concurrency: int
    wall_s: float
    p50_s: float
    p95_s: float
    completion_tokens: int

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second of wall time, over all requests."""
        return self.completion_tokens / self.wall_s if self.wall_s else 0.0


def load_test(client, requests: Sequence[dict], concurrency: int = 8) -> tuple[LoadReport, list[Answer]]:
    """Send the requests with `concurrency` in flight at once; latency percentiles and tokens per second."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        answers = list(pool.map(lambda r: ask(client, r), requests))
    wall = time.perf_counter() - started
    seconds = np.array([a.seconds for a in answers])
    report = LoadReport(len(answers), concurrency, wall, float(np.percentile(seconds, 50)),
                        float(np.percentile(seconds, 95)), sum(a.completion_tokens for a in answers))
    return report, answers


def chat_request(messages: Sequence[dict], model: str = "course-model", max_tokens: int = 48,
                 schema: dict | None = None) -> dict:
    """A greedy chat-completion request; with `schema`, the reply is constrained to JSON matching it."""
    request = {"model": model, "messages": list(messages), "temperature": 0.0, "max_tokens": max_tokens}
    if schema is not None:
        request["response_format"] = {"type": "json_object", "schema": schema}
    return request


def _serve() -> None:
    """`python -m course_lib.deployment.gguf_runtime ARGS`: llama-cpp-python's server, with safe_llama_params."""
    import llama_cpp.server.__main__ as server  # lazy: the server extra is optional

    with safe_llama_params():
        server.main()


if __name__ == "__main__":
    _serve()
