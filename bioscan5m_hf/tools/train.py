"""A small image + DNA classifier trained from the stream: single process or DDP under ``torchrun``.

    python scripts/train.py shards --split pretrain --eval-split seen --target order --epochs 5
    torchrun --nproc_per_node=2 scripts/train.py shards --epochs 2

Each rank reads its own part of every epoch through :func:`make_loader`; with ``WORLD_SIZE > 1`` the
model is wrapped in DistributedDataParallel (gloo on CPU, nccl on GPU). Every epoch logs the loss,
the train and eval accuracy and the samples/s of all ranks together.

With ``--checkpoint DIR`` rank 0 saves the loader's state (JSON) and the model and optimizer after
every ``--checkpoint-every`` steps; ``--resume`` continues from there, mid-epoch, on any number of
ranks and workers (elastic: the rest of the epoch is every record not yet trained on, once).

Each epoch's line is flushed as it is printed (``python scripts/train.py ... > log`` shows progress).
A job that seems stuck can be asked where it is: ``kill -USR1 <pid>`` of a rank, or of one of its
loader workers (they inherit the handler), prints every thread's Python stack to stderr.
"""

from __future__ import annotations

import argparse
import faulthandler
import functools
import json
import os
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..stream.loader import DECODE, make_loader
from ..stream.streaming import StreamingBIOSCAN5M
from ..transforms import MASK_ID, normalize
from ..util import atomic_path, write_atomic


class TinyNet(nn.Module):
    """k-mer bag-of-words DNA encoder + a small CNN, concatenated into a linear classifier."""

    def __init__(self, num_classes: int, vocab_size: int, use_image: bool, use_dna: bool, width: int = 64):
        super().__init__()
        self.use_image, self.use_dna = use_image, use_dna
        features = 0
        if use_dna:
            self.dna = nn.EmbeddingBag(vocab_size, width, mode="mean", padding_idx=MASK_ID)
            features += width
        if use_image:
            self.cnn = nn.Sequential(
                nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(32, width, 3, stride=2, padding=1), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten())
            features += width
        self.head = nn.Linear(features, num_classes)

    def forward(self, batch: dict) -> torch.Tensor:
        parts = []
        if self.use_dna:
            ids = batch["dna"].masked_fill(batch["dna_mask"] == 0, MASK_ID)  # padding left out of the mean
            parts.append(self.dna(ids))
        if self.use_image:
            parts.append(self.cnn(normalize(batch["image"])))
        return self.head(torch.cat(parts, dim=1))


def _all_sum(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def run(args: argparse.Namespace, echo=None) -> list[dict]:
    echo = echo or functools.partial(print, flush=True)
    distributed = int(os.environ.get("WORLD_SIZE", 1)) > 1
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if distributed:
        local = int(os.environ.get("LOCAL_RANK", 0))
        if device.type == "cuda":
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if distributed else 0
    torch.manual_seed(args.seed)
    modality = [m for m in args.modality.split(",") if m]
    what = dict(modality=modality, target_type=args.target, seed=args.seed)  # what the batches hold
    how = dict(batch_size=args.batch_size, num_workers=args.workers, image_size=args.image_size, k=args.k,
               device=device, decode=args.decode)  # how they are delivered
    train = make_loader(StreamingBIOSCAN5M(args.root, args.split, shuffle=True, **what), **how)
    evaluate = make_loader(StreamingBIOSCAN5M(args.root, args.eval_split, **what), persistent_workers=False, **how)
    classes = len(train.vocabularies[train.dataset.target_type[0]])
    model = TinyNet(classes, 2 + 4 ** args.k, "image" in modality, "dna" in modality).to(device)
    if distributed:
        # A group of its own: DDP's reducer keeps the group it is given alive past
        # destroy_process_group, with its gloo threads, into interpreter exit, where a thread
        # releasing a collective's Python tensor aborts the process ("terminate called without an
        # active exception"). The metrics' all-reduce (Python tensors) goes over the default group,
        # which destroy_process_group frees, joining its threads; DDP's own buckets are C++ tensors.
        model = nn.parallel.DistributedDataParallel(model, process_group=dist.new_group())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss(ignore_index=-1)
    keys = open(Path(args.log_keys) / f"rank{rank}.txt", "a") if args.log_keys else None
    history = []
    started = time.perf_counter()
    first = resume(args, train, model, optimizer) if args.resume else 0
    for epoch in range(first, args.epochs):
        if epoch != first or not args.resume:
            train.set_epoch(epoch)
        model.train()
        t0, seen, correct, labelled, loss_sum, steps = time.perf_counter(), 0, 0, 0, 0.0, 0
        for batch in train:
            if args.exit_at_step and rank == args.exit_rank and train.batches == args.exit_at_step:
                os._exit(17)  # a preempted process: no clean-up, no goodbye
            target = batch[args.target]
            logits = model(batch)
            loss = loss_fn(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            mask = target >= 0
            correct += int((logits.argmax(1) == target)[mask].sum())
            labelled += int(mask.sum())
            loss_sum += loss.item() * len(target)
            seen += len(target)
            steps += 1
            if keys:  # "<epoch> <step> <processid> <padding>" per sample, flushed as trained on
                padding = batch.get("padding", torch.zeros(len(target), dtype=torch.bool)).tolist()
                keys.write("".join(f"{epoch} {train.batches} {p} {int(x)}\n"
                                   for p, x in zip(batch["processid"], padding)))
                keys.flush()
            if args.checkpoint and rank == 0 and train.batches % args.checkpoint_every == 0:
                save_checkpoint(Path(args.checkpoint), train, model, optimizer)
            if args.max_steps and steps >= args.max_steps:
                break
        seconds = time.perf_counter() - t0
        model.eval()
        e_correct = e_labelled = 0
        with torch.no_grad():
            for batch in evaluate:
                target = batch[args.target]
                mask = target >= 0
                e_correct += int((model(batch).argmax(1) == target)[mask].sum())
                e_labelled += int(mask.sum())
        seen, correct, labelled, loss_sum, e_correct, e_labelled, seconds = _all_sum(
            [seen, correct, labelled, loss_sum, e_correct, e_labelled, seconds], device)
        world = dist.get_world_size() if distributed else 1
        row = {"epoch": epoch, "samples": int(seen), "loss": loss_sum / max(1, seen),
               "train_accuracy": correct / max(1, labelled), "eval_accuracy": e_correct / max(1, e_labelled),
               "samples_per_s": seen / max(1e-9, seconds / world)}
        history.append(row)
        if rank == 0:
            echo(f"epoch {epoch}: loss {row['loss']:.3f}  train acc {row['train_accuracy']:.3f}  "
                 f"eval acc ({args.eval_split}) {row['eval_accuracy']:.3f}  {row['samples_per_s']:.0f} samples/s "
                 f"({world} rank{'s' if world > 1 else ''})")
        if args.seconds and time.perf_counter() - started > args.seconds:
            break
    if keys:
        keys.close()
    if args.metrics and rank == 0:
        Path(args.metrics).write_text(json.dumps(history, indent=1))
    if distributed:
        dist.destroy_process_group()
    return history


def save_checkpoint(folder: Path, loader, model: nn.Module, optimizer) -> None:
    """The loader's state as JSON and the weights, each written whole or not at all."""
    folder.mkdir(parents=True, exist_ok=True)
    net = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    with atomic_path(folder / "weights.pt") as tmp:
        torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict()}, tmp)
    write_atomic(folder / "loader.json", json.dumps(loader.state_dict()))


def resume(args: argparse.Namespace, loader, model: nn.Module, optimizer) -> int:
    """Load ``--checkpoint`` (if there is one); returns the epoch to continue."""
    folder = Path(args.checkpoint)
    if not (folder / "loader.json").is_file():
        return 0
    loader.load_state_dict(json.loads((folder / "loader.json").read_text()))
    weights = torch.load(folder / "weights.pt", map_location="cpu", weights_only=True)  # our own file, tensors only
    net = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    net.load_state_dict(weights["model"])
    optimizer.load_state_dict(weights["optimizer"])
    return loader.epoch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a small image + DNA classifier from BIOSCAN-5M shards.")
    p.add_argument("root", help="converted repos (the OUT of convert, or shards/)")
    p.add_argument("--split", default="pretrain")
    p.add_argument("--eval-split", default="seen")
    p.add_argument("--target", default="order", help="rank to classify")
    p.add_argument("--modality", default="image,dna")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--decode", choices=DECODE, default="auto", help="where images are decoded (make_loader)")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--max-steps", type=int, default=0, help="stop each epoch after this many steps (0: whole epoch)")
    p.add_argument("--seconds", type=float, default=0, help="stop after the epoch that passes this many seconds")
    p.add_argument("--log-keys", default=None, help="folder to write each rank's training processids to")
    p.add_argument("--metrics", default=None, help="write the per-epoch metrics to this JSON file")
    p.add_argument("--checkpoint", default=None, help="folder for rank 0's checkpoints (loader state, weights)")
    p.add_argument("--checkpoint-every", type=int, default=1, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint, on any number of ranks")
    p.add_argument("--exit-at-step", type=int, default=0, help=argparse.SUPPRESS)  # tests: a preempted rank
    p.add_argument("--exit-rank", type=int, default=0, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # where a stuck rank or worker is (module doc)
    run(build_parser().parse_args(argv))
    return 0
