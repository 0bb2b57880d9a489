"""Give an already trained bundle what `convserve train` now fits after training: the
calibration temperature and the not-a-digit detector, on the same validation split its
training used (the split comes from the bundle's recorded seed and val_size). The weights are
unchanged, so the test accuracy is the one the bundle already records.

This is how model_store/mnist/2 was made from model_store/mnist/1:

    .venv/bin/python scripts/add_posthoc.py model_store/mnist/1/model.npz runs/mnist-posthoc.npz \
        --data-dir ../shared/data/mnist
    .venv/bin/convserve models publish runs/mnist-posthoc.npz --name mnist --alias production \
        --note "mnist:1's weights + calibration and the not-a-digit detector"
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from training.bundle import build_metadata, load_bundle, save_bundle
from training.data import load_mnist, resolve_data_dir
from training.posthoc import fit_posthoc
from training.recipe import split_data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="a bundle trained by convserve train (float32 or 64)")
    parser.add_argument("out", help="where to write the bundle with calibration and detector")
    parser.add_argument("--data-dir", help="the MNIST files (default: $MNIST_DIR or data/mnist)")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    record = bundle.metadata["training"]
    classes = record.get("classes")
    class_labels = list(bundle.class_labels)
    # The recipe's streams: split, init, order, detector sample (training/recipe.py).
    split_rng, _, _, posthoc_rng = (
        np.random.default_rng(child) for child in np.random.SeedSequence(record["seed"]).spawn(4)
    )
    data = load_mnist(resolve_data_dir(args.data_dir))
    selected = None if classes == list(range(10)) else classes
    splits = split_data(
        data, selected, val_size=record["val_size"], limit=record.get("limit"), rng=split_rng
    )
    posthoc = fit_posthoc(
        bundle.network, bundle.input, splits, class_labels, rng=posthoc_rng, progress=True
    )
    metadata = build_metadata(
        bundle.network,
        contract=bundle.input,
        class_labels=class_labels,
        training=record,
        metrics={**bundle.metadata.get("metrics", {}), **posthoc.metrics},
        data_fingerprint=bundle.metadata.get("data_fingerprint"),
        history=bundle.metadata.get("history"),
    )
    metadata.update(posthoc.metadata)
    save_bundle(args.out, bundle.network, metadata, posthoc.arrays)
    print(
        f"wrote {args.out}: ECE {posthoc.metrics.get('test_ece')}, AUROC on drawn non-digits "
        f"{posthoc.metrics.get('ood_auroc')}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
