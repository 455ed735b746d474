"""decode="device" (or "dali") against decode="workers" on one converted repo: run in-process where
the decoder's library loads, else by tests/stream/test_device_decode.py in .venv-official (python
device_cases.py ROOT), and by scripts/gpu_check.sh with --device cuda [--decode dali]. Prints one
JSON object."""

from __future__ import annotations

import json
import sys

import torch

#: Pixel differences of a GPU-path decoder against decode="workers" (another IDCT and resampler,
#: and for the centre crop a crop-then-resize grid up to half a source pixel off), as (mean, p99):
#: measured on the sample release (synthetic images with hard edges), see BENCHMARKS.md.
BOUNDS = {"centre": (6.0, 96), "augment": (1.0, 16)}


def check(comparison: dict, crop: str) -> None:
    """The decoder's batches are the workers' but for pixel rounding within :data:`BOUNDS`."""
    c = comparison[crop]
    assert c["batches"] > 1 and c["same_order_keys_labels"] and c["shapes_equal"] and c["channels_last"]
    assert c["mean_abs_diff"] <= BOUNDS[crop][0] and c["p99_abs_diff"] <= BOUNDS[crop][1], c


def epoch(loader) -> list[dict]:
    return [{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in b.items()} for b in loader]


def compare(root: str, split: str = "train", device: str = "cpu", image_size: int = 64, workers: int = 2,
            decode: str = "device") -> dict:
    from bioscan5m_hf import StreamingBIOSCAN5M, make_loader

    def dataset(**kw):
        return StreamingBIOSCAN5M(root, split, shuffle=True, seed=5, **kw)

    out: dict = {}
    for augment in (False, True):
        kw = dict(batch_size=16, num_workers=workers, image_size=image_size, augment=augment, device=device)
        targets = ["order", "species"]
        a = epoch(make_loader(dataset(target_type=targets), decode="workers", **kw))
        b = epoch(make_loader(dataset(target_type=targets), decode=decode, **kw))
        same = (len(a) == len(b)
                and all(x.keys() == y.keys() and x["processid"] == y["processid"] for x, y in zip(a, b))
                and all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x if k not in ("image", "processid")))
        images = [(x["image"], y["image"]) for x, y in zip(a, b)]
        diff = torch.cat([(x.int() - y.int()).abs().flatten() for x, y in images]).float()
        out["augment" if augment else "centre"] = {
            "same_order_keys_labels": bool(same), "batches": len(a),
            "shapes_equal": all(x.shape == y.shape and x.dtype == y.dtype for x, y in images),
            "channels_last": all(y.is_contiguous(memory_format=torch.channels_last) for _, y in images),
            "max_abs_diff": int(diff.max()), "mean_abs_diff": float(diff.mean()),
            "p99_abs_diff": float(diff.quantile(0.99)) if diff.numel() < 16_000_000 else None}
    # exact resume of the decoder's path, augmented: the rest of the epoch is the same batches
    kw = dict(batch_size=4, num_workers=workers, image_size=image_size, augment=True, device=device, decode=decode)
    full = epoch(make_loader(dataset(), **kw))
    loader = make_loader(dataset(), **kw)
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = loader.state_dict()
    resumed = make_loader(dataset(), **kw)
    resumed.load_state_dict(state)
    rest = epoch(resumed)
    out["resume_exact"] = (len(full) > 3 and len(rest) == len(full) - 3 and all(
        x["processid"] == y["processid"] and torch.equal(x["image"], y["image"]) for x, y in zip(full[3:], rest)))
    return out


if __name__ == "__main__":
    def option(name, default):
        return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default

    print(json.dumps(compare(sys.argv[1], device=option("--device", "cpu"), decode=option("--decode", "device"))))
