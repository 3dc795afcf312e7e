"""Summary of `nvidia-smi --query-gpu=clocks.sm,power.draw,power.limit,temperature.gpu,clocks_event_reasons.active
-lms 500` samples (image_gpu_run.sh with CLOCKS=1): is the GPU holding its clock under the image workloads, or
capped by power or heat? Only samples under load (power above a third of the limit) count.

    python benchmarks/image_gpu_clocks.py clocks.csv
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

# bits of nvmlClocksEventReasons worth naming
REASONS = {0x4: "sw power cap", 0x20: "sw thermal", 0x40: "hw thermal", 0x80: "hw power brake", 0x8: "hw slowdown"}


def main(path: str) -> None:
    rows = []
    for line in Path(path).read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        try:
            rows.append((float(parts[0]), float(parts[1]), float(parts[2]), float(parts[3]), int(parts[4], 16)))
        except (ValueError, IndexError):
            continue
    busy = [r for r in rows if r[1] > r[2] / 3]
    if not busy:
        print(f"clocks: {len(rows)} samples, none under load")
        return
    clocks, power = [r[0] for r in busy], [r[1] for r in busy]
    print(f"clocks under load: {len(busy)} samples of {len(rows)}; SM clock median {statistics.median(clocks):.0f} "
          f"MHz (min {min(clocks):.0f}, max {max(clocks):.0f}); power median {statistics.median(power):.0f} W "
          f"of {busy[0][2]:.0f} W; temperature max {max(r[3] for r in busy):.0f} C")
    for bit, name in REASONS.items():
        share = sum(1 for r in busy if r[4] & bit) / len(busy)
        if share:
            print(f"  {name}: {share:.0%} of samples")


if __name__ == "__main__":
    main(sys.argv[1])
