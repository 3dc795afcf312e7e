"""Which GPUs a config may use: nvidia-smi parsing, free-memory checks, least-loaded choice.

`choose()` returns the GPUs for a config: the pinned ones (`gpus.device_ids`) after checking they
exist and have room, otherwise the least-loaded ones. Docker gets them as `device_ids` (the container
then sees them as 0..N-1); a process on the host gets them as CUDA_VISIBLE_DEVICES.
Models load lazily, so nvidia-smi cannot see GPUs that a started-but-idle config will fill: `busy`
lists GPUs already given to running configs; they are never chosen automatically (pinning shares them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.configs import Config, Engine
from gateway.configs.schema import RUNTIME_OVERHEAD_GIB

QUERY = "index,uuid,name,memory.total,memory.used,memory.free,utilization.gpu"
MIB_PER_GIB = 1024


class GPUError(Exception):
    """The host cannot give a config the GPUs it needs; the message says what is missing."""


@dataclass(frozen=True)
class GPU:
    index: str
    uuid: str
    name: str
    total_mib: int
    used_mib: int
    free_mib: int
    util_pct: int  # -1 when nvidia-smi reports [N/A] (MIG, some datacenter modes)

    def describe(self) -> str:
        free, total = self.free_mib / MIB_PER_GIB, self.total_mib / MIB_PER_GIB
        return f"GPU {self.index} ({self.name}, {free:.1f}/{total:.1f} GiB free)"


def _num(text: str) -> int:
    text = text.strip()
    try:
        return int(float(text))
    except ValueError:
        return -1  # "[N/A]", "[Not Supported]"


def parse(text: str) -> list[GPU]:
    """Parse `nvidia-smi --query-gpu=<QUERY> --format=csv,noheader,nounits`."""
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        f = [p.strip() for p in line.split(",")]
        if len(f) < 7:
            raise GPUError(f"unexpected nvidia-smi output line: {line!r}")
        # A name may contain commas: the fields around it have fixed positions from both ends.
        name = ", ".join(f[2:-4])
        gpus.append(GPU(f[0], f[1], name, _num(f[-4]), _num(f[-3]), _num(f[-2]), _num(f[-1])))
    return gpus


def nvidia_smi() -> str | None:
    """The nvidia-smi to run (env NVIDIA_SMI overrides, for tests and unusual installs)."""
    return os.environ.get("NVIDIA_SMI") or shutil.which("nvidia-smi")


def query(timeout_s: float = 20) -> list[GPU]:
    exe = nvidia_smi()
    if not exe:
        raise GPUError("nvidia-smi was not found: this host has no NVIDIA driver (or it is not on PATH)")
    try:
        r = subprocess.run([exe, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GPUError(f"nvidia-smi failed: {e}") from None
    if r.returncode != 0:
        raise GPUError(f"nvidia-smi failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()[:500]}")
    return parse(r.stdout)


def need_free_mib(cfg: Config, gpu: GPU) -> int:
    """Free memory one GPU must have for this config.

    vLLM refuses to start unless gpu_memory_utilization x total memory is free, so that is its need;
    other engines need their share of the weights plus the runtime overhead.
    """
    if cfg.engine == Engine.vllm and cfg.vllm is not None:
        return int(gpu.total_mib * cfg.vllm.gpu_memory_utilization)
    share_gib = cfg.model.weights_gib() * 1.05 / max(cfg.gpus.count, 1) + RUNTIME_OVERHEAD_GIB
    return int(share_gib * MIB_PER_GIB)


def _match(gpus: list[GPU], ident: str) -> GPU | None:
    return next((g for g in gpus if ident in (g.index, g.uuid)), None)


def choose(cfg: Config, gpus: list[GPU], busy: Mapping[str, str] | None = None) -> list[GPU]:
    """The GPUs this config should run on, or GPUError saying why it cannot run here.

    busy: {gpu index: config name} for GPUs already given to running configs.
    """
    busy = busy or {}
    n = cfg.gpus.count
    if len(gpus) < n:
        raise GPUError(f"{cfg.name} needs {n} NVIDIA GPU(s) but this host has {len(gpus)}"
                       + (": " + "; ".join(g.describe() for g in gpus) if gpus else ""))
    if cfg.gpus.device_ids:
        picked = []
        for ident in cfg.gpus.device_ids:
            g = _match(gpus, ident)
            if g is None:
                known = ", ".join(g.index for g in gpus)
                raise GPUError(f"{cfg.name} pins GPU {ident!r}, which this host does not have (GPUs: {known})")
            picked.append(g)
        _check_room(cfg, picked, busy)
        return picked
    free = [g for g in gpus if g.index not in busy]
    if len(free) < n:
        taken = ", ".join(f"GPU {i} ({owner})" for i, owner in sorted(busy.items()))
        raise GPUError(f"{cfg.name} needs {n} GPU(s) but only {len(free)} are not given to a running config "
                       f"({taken}; their models load lazily, so nvidia-smi may not show it yet). Stop one, or pin "
                       "gpus.device_ids in the config to share GPUs on purpose")
    roomy = [g for g in free if g.free_mib >= need_free_mib(cfg, g)]
    # Most free memory first, then least busy, then lowest index.
    roomy.sort(key=lambda g: (-g.free_mib, g.util_pct, _num(g.index)))
    if len(roomy) < n:
        detail = "; ".join(f"{g.describe()}, needs {need_free_mib(cfg, g) / MIB_PER_GIB:.1f} GiB" for g in free)
        raise GPUError(f"{cfg.name} needs {n} GPU(s) with enough free memory, only {len(roomy)} have it: {detail}")
    return roomy[:n]


def _check_room(cfg: Config, picked: Iterable[GPU], busy: Mapping[str, str]) -> None:
    for g in picked:
        need = need_free_mib(cfg, g)
        if g.free_mib < need:
            raise GPUError(f"{cfg.name} needs {need / MIB_PER_GIB:.1f} GiB free on pinned {g.describe()}"
                           + (f" (used by {busy[g.index]})" if g.index in busy else ""))


def cuda_visible_devices(picked: Iterable[GPU]) -> str:
    """For a process on the host (a container sees its device_ids as 0..N-1 instead)."""
    return ",".join(g.index for g in picked)


def intel_render_nodes(dri: Path = Path("/dev/dri")) -> list[str]:
    """Intel (or any DRM) render nodes; a container with /dev/dri mapped can use them."""
    return sorted(str(p) for p in dri.glob("renderD*")) if dri.is_dir() else []


def check_intel(cfg: Config, dri: Path = Path("/dev/dri")) -> list[str]:
    nodes = intel_render_nodes(dri)
    if len(nodes) < cfg.gpus.count:
        raise GPUError(f"{cfg.name} needs {cfg.gpus.count} Intel GPU(s) (render nodes under {dri}) "
                       f"but this host has {len(nodes)}: install the Intel GPU driver or run a CPU config "
                       "(e.g. mt-photos-cpu)")
    return nodes
