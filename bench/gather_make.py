"""Writes the synthetic DCP checkpoint `deno task bench gather` reads: a ~1 GB bf16 model sharded
over 4 gloo ranks (FSDP2-style Shard(0) DTensors, uneven rows included), written by real
torch.distributed.checkpoint. Each rank only allocates its own shard.

Usage (from the repository root, through the torch peer):
    torch-peer bash -c 'USE_LIBUV=0 python3 bench/gather_make.py OUT_DIR'
"""

import os
import sys
from datetime import timedelta

os.environ["USE_LIBUV"] = "0"

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard

WORLD = 4
# name -> shape: 30 square projections, an uneven embedding, a norm, and a 1-row head.
SHAPES = {f"model.layers.{i // 6}.proj{i % 6}.weight": (4096, 4096) for i in range(30)}
SHAPES["model.embed_tokens.weight"] = (32003, 1024)
SHAPES["model.norm.weight"] = (4096,)
SHAPES["score.weight"] = (1, 4096)


def local_rows(n, rank):
    c = -(-n // WORLD)
    start = min(n, rank * c)
    return start, min(n, start + c) - start


def worker(rank, out):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = os.environ.get("CKPT_BENCH_PORT", "29655")
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=120))
    mesh = init_device_mesh("cpu", (WORLD,))
    sd = {}
    for i, (name, shape) in enumerate(SHAPES.items()):
        start, rows = local_rows(shape[0], rank)
        g = torch.Generator().manual_seed(i * 10 + rank)
        local = torch.randn((rows, *shape[1:]), generator=g, dtype=torch.float32).to(torch.bfloat16)
        stride = tuple(int(torch.tensor(shape[d + 1 :]).prod()) for d in range(len(shape)))
        sd[name] = DTensor.from_local(
            local, mesh, [Shard(0)], run_check=False, shape=torch.Size(shape), stride=stride
        )
    dcp.save(sd, checkpoint_id=out)
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(worker, args=(sys.argv[1],), nprocs=WORLD, join=True)
