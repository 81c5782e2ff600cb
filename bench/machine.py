"""The prelude every serving benchmark prints first: how fast this machine can be, and how busy it is.

Batch-1 decoding reads every weight once per token, so its ceiling is memory bandwidth / weight
bytes (the roofline). The bandwidth is measured here, as a large tensor copy counted STREAM-style
(bytes read + bytes written), so a table's tokens/s can be read as a share of what this machine
allows. Numbers taken while other work runs are not results: the prelude refuses to run when the
load average is above 0.5 per core or a vLLM engine is already running, unless `--allow-busy` is
given, and then it marks the output as taken on a busy machine (before and after the table).

    python -m factflow.bench.machine          # the prelude alone
"""

from __future__ import annotations

import argparse
import atexit
import os
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

__all__ = ["Machine", "add_busy_flag", "measure_bandwidth", "prelude", "running_engines", "weight_bytes"]

MAX_LOAD_PER_CORE = 0.5
_COPY_MIB = 256  # well past any cache, so the copy runs at memory speed
_ENGINE_MARKERS = ("vllm.entrypoints", "vllm serve", "VLLM::EngineCore", "VLLM::Worker")


@dataclass(frozen=True)
class Machine:
    bandwidth_gbs: float  # bytes read + written per second by a large tensor copy, in GB/s
    weight_bytes: int
    load: tuple[float, float, float]
    cores: int
    engines: tuple[str, ...]  # pids of vLLM processes running before the benchmark

    @property
    def roofline_tps(self) -> float:
        """Batch-1 decode ceiling: every weight byte read once per token."""
        return self.bandwidth_gbs * 1e9 / self.weight_bytes

    @property
    def busy(self) -> bool:
        return self.load[0] > MAX_LOAD_PER_CORE * self.cores or bool(self.engines)

    def share(self, tokens_per_s: float) -> float:
        """tokens/s as a share of the roofline."""
        return tokens_per_s / self.roofline_tps


def measure_bandwidth(mib: int = _COPY_MIB, repeats: int = 5) -> float:
    """GB/s of a `mib`-MiB float32 copy with torch's threads, best of `repeats`."""
    import torch

    src = torch.ones(mib * 1024 * 1024 // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch: page faults are not bandwidth
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best / 1e9


def weight_bytes(model_path: str | Path) -> int:
    """Bytes of the model's weight files (safetensors, else PyTorch bins)."""
    folder = Path(model_path)
    files = list(folder.glob("*.safetensors")) or list(folder.glob("*.bin"))
    if not files:
        raise SystemExit(f"no weight files in {folder}: pull the model with `factflow models pull`")
    return sum(f.stat().st_size for f in files)


def running_engines() -> tuple[str, ...]:
    """Pids of vLLM servers and engine processes on this machine (other than this process)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # the process ended while we looked
            continue
        if any(marker in cmd for marker in _ENGINE_MARKERS):
            found.append(proc.name)
    return tuple(sorted(found, key=int))


def add_busy_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-busy",
        action="store_true",
        help="Run even when the load is above 0.5 per core or a vLLM engine runs; the output is marked.",
    )


def prelude(
    allow_busy: bool = False, model_path: str | Path | None = None, *, own_engine: bool = False
) -> Machine:
    """Measure and print bandwidth, roofline and load; exit (code 3) on a busy machine unless allowed.

    `own_engine`: the benchmark measures an already running vLLM (not another engine in the way).
    """
    if model_path is None:
        from factflow.serving.models import resolve_model
        from factflow.settings import get_settings

        model_path = resolve_model(get_settings())
    cores = os.cpu_count() or 1
    machine = Machine(
        bandwidth_gbs=measure_bandwidth(),
        weight_bytes=weight_bytes(model_path),
        load=os.getloadavg(),
        cores=cores,
        engines=() if own_engine else running_engines(),
    )
    console = Console(stderr=True)
    one, five, fifteen = machine.load
    console.print(
        f"machine: {machine.bandwidth_gbs:.1f} GB/s copy bandwidth ({_COPY_MIB} MiB, read + write); "
        f"{machine.weight_bytes / 1e6:.0f} MB of weights -> batch-1 roofline "
        f"{machine.roofline_tps:.1f} tokens/s; load average {one:.2f} {five:.2f} {fifteen:.2f} "
        f"on {cores} cores"
    )
    if not machine.busy:
        return machine
    why = []
    if one > MAX_LOAD_PER_CORE * cores:
        why.append(f"load {one:.2f} is above {MAX_LOAD_PER_CORE} per core ({MAX_LOAD_PER_CORE * cores:.1f})")
    if machine.engines:
        why.append(f"vLLM is running (pids {', '.join(machine.engines)})")
    if not allow_busy:
        console.print("[red]busy machine: " + "; ".join(why) + ".[/red]")
        console.print("Stop the other work and rerun, or pass --allow-busy to run with a marked table.")
        raise SystemExit(3)
    banner = "[bold red]BUSY MACHINE (--allow-busy): " + "; ".join(why) + ". Numbers are not results.[/]"
    console.print(banner)
    atexit.register(console.print, banner)  # under the table too, where a reader looks
    return machine


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Bandwidth, roofline and load of this machine.")
    add_busy_flag(parser)
    prelude(parser.parse_args().allow_busy)
