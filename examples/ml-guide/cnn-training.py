#!/usr/bin/env python3
"""Train a small tumour classifier on PCAM-like tiles (the Machine Learning Guide's program).

Reads ``camelyonpatch_level_2_split_{train,valid}_{x,y}.h5`` from DATA_DIR, trains for
``--epochs`` epochs and writes one line per epoch to ``LOG_DIR/LOG_FILE_NAME``, flushed and
synced at once, so that ``tail -f`` on the machine that holds LOG_DIR (an SSHFS mount in
the guide) shows the training live. The trained weights go to ``weights.h5`` in the
working directory, where faice collects outputs.

With PyTorch installed and a CUDA GPU visible, a small CNN is trained on the GPU.
Otherwise a numpy-only model runs on the CPU (average pooling + logistic regression), so
the guide also works on a laptop without a GPU; the log says which one ran.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TextIO

import h5py
import numpy as np

PREFIX = "camelyonpatch_level_2_split"
POOL = 8  # 96x96 tiles -> 12x12 feature maps in the numpy model


def load_split(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(data_dir / f"{PREFIX}_{split}_x.h5", "r") as f:
        x = f["x"][:]
    with h5py.File(data_dir / f"{PREFIX}_{split}_y.h5", "r") as f:
        y = f["y"][:].reshape(-1).astype(np.float32)
    return x, y


class EpochLog:
    """Writes one line per event to the log file and stdout; each line reaches the disk
    (and so the SSHFS server) before training continues."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = path.open("a", encoding="utf-8")

    def line(self, text: str) -> None:
        self._file.write(text + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        print(text, flush=True)

    def close(self) -> None:
        self._file.close()


# ------------------------------------------------------------------ numpy model (CPU)


def pooled_features(x: np.ndarray) -> np.ndarray:
    """Average-pool each channel POOLxPOOL and scale to [0, 1]: (N, 96, 96, 3) -> (N, 432)."""
    n, h, w, c = x.shape
    pooled = x.reshape(n, h // POOL, POOL, w // POOL, POOL, c).mean(axis=(2, 4))
    return (pooled / 255.0).reshape(n, -1).astype(np.float32)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def loss_and_accuracy(w: np.ndarray, b: float, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    p = sigmoid(x @ w + b)
    eps = 1e-7
    loss = -np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps))
    return float(loss), float(np.mean((p > 0.5) == (y > 0.5)))


def train_numpy(args: argparse.Namespace, log: EpochLog) -> dict[str, np.ndarray]:
    x_train, y_train = load_split(args.data_dir, "train")
    x_valid, y_valid = load_split(args.data_dir, "valid")
    f_train, f_valid = pooled_features(x_train), pooled_features(x_valid)
    mean, std = f_train.mean(axis=0), f_train.std(axis=0) + 1e-6
    f_train, f_valid = (f_train - mean) / std, (f_valid - mean) / std

    rng = np.random.default_rng(args.seed)
    w = np.zeros(f_train.shape[1], dtype=np.float32)
    b = 0.0
    log.line(f"# model=numpy-logistic device=cpu learning_rate={args.learning_rate} "
             f"batch_size={args.batch_size} epochs={args.epochs} train={len(y_train)} valid={len(y_valid)}")
    for epoch in range(1, args.epochs + 1):
        started = time.monotonic()
        order = rng.permutation(len(y_train))
        for start in range(0, len(order), args.batch_size):
            idx = order[start:start + args.batch_size]
            p = sigmoid(f_train[idx] @ w + b)
            grad = p - y_train[idx]
            w -= args.learning_rate * (f_train[idx].T @ grad) / len(idx)
            b -= args.learning_rate * float(grad.mean())
        pace(started, args.min_epoch_seconds)
        loss, acc = loss_and_accuracy(w, b, f_train, y_train)
        val_loss, val_acc = loss_and_accuracy(w, b, f_valid, y_valid)
        log.line(epoch_line(epoch, loss, acc, val_loss, val_acc, time.monotonic() - started))
    return {"w": w, "b": np.array([b], dtype=np.float32), "feature_mean": mean, "feature_std": std}


# ------------------------------------------------------------------ PyTorch model (GPU)


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def train_torch(args: argparse.Namespace, log: EpochLog) -> dict[str, np.ndarray]:
    import torch
    from torch import nn

    torch.manual_seed(args.seed)
    device = torch.device("cuda")

    def tensors(split: str):
        x, y = load_split(args.data_dir, split)
        xt = torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255.0)
        return xt.to(device), torch.from_numpy(y).to(device)

    x_train, y_train = tensors("train")
    x_valid, y_valid = tensors("valid")
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(64, 1),
    ).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    criterion = nn.BCEWithLogitsLoss()
    log.line(f"# model=torch-cnn device={torch.cuda.get_device_name(device)} learning_rate={args.learning_rate} "
             f"batch_size={args.batch_size} epochs={args.epochs} train={len(y_train)} valid={len(y_valid)}")

    def evaluate(x, y) -> tuple[float, float]:
        model.eval()
        with torch.no_grad():
            logits = model(x).squeeze(1)
            return float(criterion(logits, y)), float(((logits > 0) == (y > 0.5)).float().mean())

    for epoch in range(1, args.epochs + 1):
        started = time.monotonic()
        model.train()
        order = torch.randperm(len(y_train), device=device)
        for start in range(0, len(order), args.batch_size):
            idx = order[start:start + args.batch_size]
            optimiser.zero_grad()
            loss = criterion(model(x_train[idx]).squeeze(1), y_train[idx])
            loss.backward()
            optimiser.step()
        pace(started, args.min_epoch_seconds)
        loss, acc = evaluate(x_train, y_train)
        val_loss, val_acc = evaluate(x_valid, y_valid)
        log.line(epoch_line(epoch, loss, acc, val_loss, val_acc, time.monotonic() - started))
    return {name: value.detach().cpu().numpy() for name, value in model.state_dict().items()}


# ------------------------------------------------------------------ shared


def pace(started: float, min_seconds: float) -> None:
    """Stretch an epoch to at least ``min_seconds`` (to watch a demo run live)."""
    left = min_seconds - (time.monotonic() - started)
    if left > 0:
        time.sleep(left)


def epoch_line(epoch: int, loss: float, acc: float, val_loss: float, val_acc: float, seconds: float) -> str:
    return (f"epoch={epoch} loss={loss:.4f} accuracy={acc:.4f} "
            f"val_loss={val_loss:.4f} val_accuracy={val_acc:.4f} seconds={seconds:.2f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path, help="directory with the camelyonpatch_level_2_split_*.h5 files")
    parser.add_argument("--log-dir", type=Path, default=Path("."), help="directory for the training log (default: .)")
    parser.add_argument("--log-file-name", default="training.log", help="training log file name (default: training.log)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="learning rate (default: 0.001)")
    parser.add_argument("--batch-size", type=int, default=32, help="mini-batch size (default: 32)")
    parser.add_argument("--epochs", type=int, default=10, help="number of epochs (default: 10)")
    parser.add_argument("--weights-file", default="weights.h5", help="where to write the weights (default: weights.h5)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--min-epoch-seconds", type=float, default=0.0,
                        help="make every epoch last at least this long, to watch the log live (default: 0)")
    parser.add_argument("--cpu", action="store_true", help="use the numpy CPU model even when a GPU is present")
    args = parser.parse_args(argv)
    if args.learning_rate <= 0 or args.batch_size < 1 or args.epochs < 1:
        parser.error("--learning-rate must be > 0, --batch-size and --epochs >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = EpochLog(args.log_dir / args.log_file_name)
    try:
        use_gpu = not args.cpu and cuda_available()
        weights = train_torch(args, log) if use_gpu else train_numpy(args, log)
        with h5py.File(args.weights_file, "w") as f:
            for name, value in weights.items():
                f.create_dataset(name, data=value)
            f.attrs["learning_rate"] = args.learning_rate
            f.attrs["batch_size"] = args.batch_size
            f.attrs["epochs"] = args.epochs
        log.line(f"# done weights={args.weights_file}")
    finally:
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
