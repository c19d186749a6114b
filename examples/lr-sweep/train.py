#!/usr/bin/env python3
"""Train a small neural network (2-32-1 MLP, numpy, CPU) on the two-moons data set with
plain mini-batch SGD, and write what a Keras user would get:

* training.csv  one line per epoch (epoch,accuracy,loss,val_accuracy,val_loss), like Keras' CSVLogger
* final.json    the final metrics
* stdout        "epoch=N loss=… val_accuracy=…" lines

The data set and the initial weights come from fixed seeds, so a learning rate and batch
size always give the same numbers: the sweep's winner is a property of the data.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

DATA_SEED = 20240521
INIT_SEED = 7


def two_moons(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved half circles with Gaussian noise (like scikit-learn's make_moons)."""
    half = n // 2
    angle_a = rng.uniform(0, np.pi, half)
    angle_b = rng.uniform(0, np.pi, n - half)
    a = np.stack([np.cos(angle_a), np.sin(angle_a)], axis=1)
    b = np.stack([1 - np.cos(angle_b), 0.5 - np.sin(angle_b)], axis=1)
    x = np.concatenate([a, b]) + rng.normal(0, noise, (n, 2))
    y = np.concatenate([np.zeros(half), np.ones(n - half)])
    order = rng.permutation(n)
    return x[order], y[order]


def forward(params: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hidden = np.tanh(x @ params["w1"] + params["b1"])
    logits = hidden @ params["w2"] + params["b2"]
    return hidden, 1.0 / (1.0 + np.exp(-np.clip(logits[:, 0], -30, 30)))


def evaluate(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    _, p = forward(params, x)
    eps = 1e-7
    loss = -np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps))
    return float(loss), float(np.mean((p > 0.5) == (y > 0.5)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learning-rate", type=float, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=32)
    args = parser.parse_args()

    data = np.random.default_rng(DATA_SEED)
    x_train, y_train = two_moons(1000, 0.2, data)
    x_valid, y_valid = two_moons(500, 0.2, data)
    init = np.random.default_rng(INIT_SEED)
    params = {
        "w1": init.normal(0, 1.0, (2, args.hidden)), "b1": np.zeros(args.hidden),
        "w2": init.normal(0, 1.0 / np.sqrt(args.hidden), (args.hidden, 1)), "b2": np.zeros(1),
    }
    shuffle = np.random.default_rng(INIT_SEED + 1)
    started = time.monotonic()
    with open("training.csv", "w", newline="") as log:
        log.write("epoch,accuracy,loss,val_accuracy,val_loss\r\n")
        for epoch in range(args.epochs):
            order = shuffle.permutation(len(y_train))
            for start in range(0, len(order), args.batch_size):
                idx = order[start:start + args.batch_size]
                x, y = x_train[idx], y_train[idx]
                hidden, p = forward(params, x)
                grad_logits = (p - y)[:, None] / len(idx)  # d(mean BCE)/d(logits)
                grad_hidden = (grad_logits @ params["w2"].T) * (1 - hidden ** 2)
                params["w2"] -= args.learning_rate * hidden.T @ grad_logits
                params["b2"] -= args.learning_rate * grad_logits.sum(axis=0)
                params["w1"] -= args.learning_rate * x.T @ grad_hidden
                params["b1"] -= args.learning_rate * grad_hidden.sum(axis=0)
            loss, acc = evaluate(params, x_train, y_train)
            val_loss, val_acc = evaluate(params, x_valid, y_valid)
            log.write(f"{epoch},{acc:.4f},{loss:.4f},{val_acc:.4f},{val_loss:.4f}\r\n")
            log.flush()
            print(f"epoch={epoch} loss={loss:.4f} accuracy={acc:.4f} val_loss={val_loss:.4f} "
                  f"val_accuracy={val_acc:.4f}", flush=True)
    final = {"accuracy": acc, "loss": loss, "val_accuracy": val_acc, "val_loss": val_loss,
             "train_seconds": round(time.monotonic() - started, 3)}
    with open("final.json", "w") as handle:
        json.dump(final, handle)
        handle.write("\n")


if __name__ == "__main__":
    main()
