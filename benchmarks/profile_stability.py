"""How stable are `profile` figures from one run to the next?

Exports a small CIFAR-like conv net to ONNX (dynamo exporter, one file,
dynamic batch), then calls ``nasdeploy.deploy.profile.profile`` ``--pairs``
times twice in a row (each call a fresh ORT session, as two consecutive
`nasdeploy profile` commands would be) and prints, per batch size, the
relative p50 difference |b − a| / a of each back-to-back pair, plus the
ORT/eager ratio. Not part of the test run.

    python benchmarks/profile_stability.py --pairs 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from torch import nn

from nasdeploy.deploy.profile import ProfileConfig, profile


class SmallConvNet(nn.Module):
    """Stem + two separable-conv stages + classifier: DARTS-like ops at CIFAR size."""

    def __init__(self, c: int = 32, num_classes: int = 10):
        super().__init__()

        def sep(ci, co, stride):
            return nn.Sequential(
                nn.ReLU(),
                nn.Conv2d(ci, ci, 3, stride, 1, groups=ci, bias=False),
                nn.Conv2d(ci, co, 1, bias=False),
                nn.BatchNorm2d(co),
            )

        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.body = nn.Sequential(sep(c, c, 1), sep(c, 2 * c, 2), sep(2 * c, 2 * c, 1), sep(2 * c, 4 * c, 2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * c, num_classes))

    def forward(self, x):
        return self.head(self.body(self.stem(x)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3, help="back-to-back profile pairs")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args()

    torch.manual_seed(0)
    net = SmallConvNet().eval()
    cfg = ProfileConfig(
        batch_sizes=tuple(args.batch_sizes), threads=args.threads, warmup=args.warmup, repeats=args.repeats
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            net,
            (torch.randn(2, 3, 32, 32),),
            str(path),
            dynamo=True,
            external_data=False,
            dynamic_shapes={"x": {0: "batch"}},
            input_names=["input"],
            output_names=["logits"],
            verbose=False,
        )
        diffs: dict[int, list[float]] = {b: [] for b in cfg.batch_sizes}
        eager_diffs: dict[int, list[float]] = {b: [] for b in cfg.batch_sizes}
        first = None
        for i in range(args.pairs):
            a = profile(path, cfg, torch_model=net)
            b = profile(path, cfg, torch_model=net)
            first = first or a
            for ba, bb in zip(a.batches, b.batches):
                d = abs(bb.ort.p50_ms - ba.ort.p50_ms) / ba.ort.p50_ms
                diffs[ba.batch_size].append(d)
                eager_diffs[ba.batch_size].append(abs(bb.eager.p50_ms - ba.eager.p50_ms) / ba.eager.p50_ms)
                print(
                    f"pair {i + 1} batch {ba.batch_size:3d}: p50 {ba.ort.p50_ms:8.4f} → {bb.ort.p50_ms:8.4f} ms"
                    f"  diff {100 * d:5.2f}%  ORT/eager {ba.ort_over_eager_p50:.2f} / {bb.ort_over_eager_p50:.2f}"
                )

    fp = first.fingerprint
    print(
        f"\nmachine: {fp['cpu']}, {fp['logical_cores']} cores, ORT {fp['onnxruntime']}, {fp['threads']} thread(s), "
        f"opt {fp['opt_level']}; warm-up {cfg.warmup}, repeats {cfg.repeats}; "
        f"load average at the first run {first.load_avg}"
    )
    print("run-to-run relative p50 difference over back-to-back pairs (ORT; PyTorch eager for reference):")
    for bsz, ds in diffs.items():
        es = eager_diffs[bsz]
        print(
            f"  batch {bsz:3d}: ORT median {100 * statistics.median(ds):5.2f}%  max {100 * max(ds):5.2f}%"
            f"   eager median {100 * statistics.median(es):5.2f}%  max {100 * max(es):5.2f}%  (n={len(ds)})"
        )


if __name__ == "__main__":
    main()
