"""Reconstruction quality and time: every method on the shipped scans and on HTC2022 `ta`.

Shipped scans are scored against their ground truth (PSNR, SSIM). HTC2022 `ta`, reduced to
60 views over 360 degrees and to a limited 90-degree arc, is scored against the publisher's
full-data FBP (after a least-squares scale) and its segmentation (accuracy of an Otsu
threshold of the reconstruction).

    python benchmarks/reconstruction.py [--quick] [--json PATH]
"""

from __future__ import annotations

import dataclasses
import time

from common import SCANS, SHARED_DATA, parse_args, report

from ctbayes.io import read_scan
from ctbayes.reconstruct import METHODS, ReconstructConfig, reconstruct
from ctbayes.uncertainty import UncertaintyConfig


def htc_scans(image_size: int):
    """HTC2022 `ta` at 60 views over 360 degrees and at a 90-degree arc (every 2nd view)."""
    path = SHARED_DATA / "htc2022" / "htc2022_ta_full.mat"
    if not path.exists():
        print(f"skipping HTC2022: {path} is not present")
        return []
    from ctbayes.io.importers import import_scan

    return [
        ("htc2022_ta 60 views/360", import_scan(path, every=12, image_size=image_size)),
        ("htc2022_ta 90deg arc", import_scan(path, every=2, angle_range=(0.0, 90.0), image_size=image_size)),
    ]


def method_configs(quick: bool):
    for method in METHODS:
        # the reconstruction alone: the uncertainty pass has its own benchmark
        config = ReconstructConfig(method=method, uncertainty=UncertaintyConfig(method="none"))
        if quick:
            config = dataclasses.replace(
                config, dip=dataclasses.replace(config.dip, iterations=config.dip.iterations // 4))
        yield config


def main():
    args = parse_args(__doc__.splitlines()[0])
    scans = [(p.stem, read_scan(p)) for p in SCANS]
    scans += htc_scans(image_size=128 if args.quick else 256)
    rows = []
    for name, scan in scans:
        for config in method_configs(args.quick):
            start = time.perf_counter()
            result = reconstruct(scan, config)
            row = {"scan": name, "method": config.method, "seconds": time.perf_counter() - start}
            keys = ("psnr", "ssim", "psnr_vs_reference_fbp", "segmentation_accuracy")
            row |= {k: result.metrics[k] for k in keys if k in result.metrics}
            rows.append(row)
            print(row, flush=True)
    report(rows, args.json, "Reconstruction quality (PSNR dB, SSIM) and wall time (s)")


if __name__ == "__main__":
    main()
