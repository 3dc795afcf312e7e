"""GPU choice at start: the config's pinned device_ids, else the GPU(s) with the most free memory.

Done by setting CUDA_VISIBLE_DEVICES before torch initialises CUDA, so the rest of the service always
uses "cuda" (= cuda:0) and never creates contexts on the other GPUs. nvidia-smi is asked instead of
torch because torch would create a context (and take memory) on every GPU it inspects.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

from gateway.configs.schema import GPUs

log = logging.getLogger("image.gpu")


def parse_free(csv: str) -> list[tuple[str, int]]:
    """`nvidia-smi --query-gpu=index,memory.free --format=csv,noheader,nounits` -> [(index, free MiB)]."""
    out = []
    for line in csv.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[1].isdigit():
            out.append((parts[0], int(parts[1])))
    return out


def most_free(free: list[tuple[str, int]], count: int) -> list[str]:
    return [idx for idx, _ in sorted(free, key=lambda f: -f[1])[:count]]


def query_free() -> list[tuple[str, int]]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        res = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.free", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("nvidia-smi failed (%s); using the default GPU", e)
        return []
    return parse_free(res.stdout)


def select_device(gpus: GPUs, env: dict[str, str] | None = None) -> str:
    """Returns "cpu" or "cuda"; may set CUDA_VISIBLE_DEVICES in `env` (default os.environ)."""
    env = os.environ if env is None else env
    if gpus.vendor != "nvidia" or not gpus.count:
        return "cpu"
    if gpus.device_ids:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus.device_ids)
    elif "CUDA_VISIBLE_DEVICES" not in env:  # an orchestrator that already chose wins
        chosen = most_free(query_free(), gpus.count)
        if chosen:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(chosen)
    log.info("GPU(s): CUDA_VISIBLE_DEVICES=%s", env.get("CUDA_VISIBLE_DEVICES", "(all)"))
    return "cuda"
