"""Plain-Python helpers for checking losses against loops on tiny inputs."""

import math

import torch
import torch.nn.functional as F


def emb(n: int, d: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1)


def dot(u, v) -> float:
    return sum(a * b for a, b in zip(u, v, strict=True))


def lse(values) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def unit(v):
    n = math.sqrt(sum(a * a for a in v))
    return [a / n for a in v]


def two_steps_on_pairs(out, *flags: str) -> list[dict]:
    """Metrics rows of a 2-step CLI run of a micro model on scenes that are all pairs of
    two objects (so most samples get hard negatives), with the extra ``flags``."""
    import json

    from clipforge.cli.main import main
    from tests.conftest import MICRO_ARGS_CLI

    args = ["train", *flags, "--model-args", MICRO_ARGS_CLI, "--steps", "2",
            "--shapes-args", "count_weights=[0,1,0,0],group_prob=0",
            "--batch-size", "16", "--warmup", "1", "--log-every", "1", "--eval-every", "0",
            "--eval-per-class", "1", "--eval-pairs", "16", "--progress", "false",
            "--threads", "1", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
