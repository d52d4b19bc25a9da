"""The collectives of the policy worker's two data-parallel strategies (trainer.strategy).

Why a module of its own: rlkit/policy/worker.py reads as one data-parallel update (slice, accumulate, clip, step)
whatever the strategy; everything that knows how ranks talk (the flat gradient all-reduce of "replicate",
and FSDP2's units, DTensors and full state dicts for "fsdp2") lives here, so the worker stays one screen
per method and under 500 lines.

- replicate: every rank holds the whole model and AdamW state; `all_reduce_grads` sums gradients in one flat
  buffer (DDP written out).
- fsdp2 (`shard_policy`): `torch.distributed.fsdp.fully_shard` on every transformer block (the model's
  `_no_split_modules`: decoder layers, vision blocks), then on the vision tower (its own unit: rlkit/policy/vision.py
  calls it outside the root forward to encode each distinct image once), then on the root. Each rank keeps
  1/world of every weight, gradient and AdamW moment; a unit's weights are all-gathered for its forward and
  backward, and its gradients reduce-scattered. The worker scales each micro-batch's loss as its share of the
  WHOLE mini-batch, so gradients are summed over ranks (`set_gradient_divide_factor(1.0)` on every unit;
  FSDP2 would average by default). Every forward is a collective, so every rank runs the same passes
  (`pass_counts`: padding passes whose loss is multiplied by zero).
- Weights leave a sharded model as full tensors: `full_state_dict` (the sync's and the checkpoint's state
  dict, transformers' names, on rank 0) and `full_optimizer_state` / `shard_optimizer_state` (the optimizer
  state in `torch.optim.Optimizer.state_dict()`'s own format, so a checkpoint resumes under either strategy).
"""
from __future__ import annotations

import math

import torch

STRATEGIES = ("replicate", "fsdp2")
VISION_TOWER_NAMES = ("visual", "vision_tower", "vision_model")


def check_strategy(strategy: str, *, lora: bool = False) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"config key 'trainer.strategy': {strategy!r} is not one of {list(STRATEGIES)}")
    if strategy == "fsdp2" and lora:
        raise ValueError("config keys 'trainer.strategy' and 'model.lora': fsdp2 with LoRA adapters is not "
                         "supported (the reference-by-adapters-off and the merged state dict need the whole model); "
                         "use trainer.strategy: replicate for LoRA")


def rendezvous_file(port: int, world_size: int, token: str = "") -> str:
    """Where the ranks of a local gloo group rendezvous (the driver removes it when the group closes)."""
    import os
    import tempfile

    return os.path.join(tempfile.gettempdir(), f"rlkit-rendezvous-{port}-{world_size}{'-' + token if token else ''}")


def init_group(device: torch.device, address: str, port: int, rank: int, world_size: int, backend: str = "",
               timeout_s: float = 600.0, token: str = "") -> None:
    """torch.distributed's default group: NCCL on CUDA, gloo on CPU. `address` "file:///path" rendezvous
    through that file (one machine, no TCP store: benchmarks/gpu_fsdp.py). `token` makes a local group's
    rendezvous file unique (`rendezvous_file`)."""
    import datetime
    import os

    import torch.distributed as dist

    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    init_method = address if address.startswith("file://") else f"tcp://{address}:{port}"
    if backend == "gloo" and address == "127.0.0.1":
        # A local run keeps every socket on loopback: torch's TCPStore listens on all interfaces whatever
        # address it is given, so rendezvous through a file (every rank is on this machine), and gloo's own
        # connections go over the loopback interface.
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        init_method = "file://" + rendezvous_file(port, world_size, token)
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))


# ---------------------------------------------------------------------------------------- replicate
def all_reduce_grads(params: list[torch.Tensor]) -> None:
    """Sum the gradients of `params` over ranks in one flat buffer (a missing gradient counts as zeros)."""
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def merge_metrics(world_size: int, loss_total: float, weight_sum: float, totals: dict) -> tuple[float, float, dict]:
    """Sum this step's loss, token weight and metric sums over ranks (every rank gets the same result)."""
    import torch.distributed as dist

    parts: list = [None] * world_size
    dist.all_gather_object(parts, (loss_total, weight_sum, totals))
    merged: dict[str, float] = {}
    for _, _, t in parts:
        for k, v in t.items():
            merged[k] = merged.get(k, 0.0) + v
    return sum(p[0] for p in parts), sum(p[1] for p in parts), merged


# ---------------------------------------------------------------------------------------- fsdp2
def pass_counts(n_rows: int, world_size: int, micro_batch_size: int) -> list[int]:
    """Micro-batches (forward passes) each rank runs on its contiguous slice of `n_rows` rows."""
    return [math.ceil((n_rows * (r + 1) // world_size - n_rows * r // world_size) / micro_batch_size)
            for r in range(world_size)]


def vision_tower(model) -> torch.nn.Module | None:
    """The vision encoder module of a VLM (the shallowest module named visual / vision_tower / vision_model)."""
    found = [(name.count("."), name, m) for name, m in model.named_modules()
             if name.rsplit(".", 1)[-1] in VISION_TOWER_NAMES]
    return min(found, key=lambda t: (t[0], t[1]))[2] if found else None


def shard_policy(model, device: torch.device, world_size: int) -> list[torch.nn.Module]:
    """FSDP2 over the default process group: blocks, then the vision tower, then the root. Returns the units.

    Gradients are summed, not averaged, over ranks (divide factor 1 on every unit), and the root is lazily
    initialised here: the vision tower may run before the root's forward (rlkit/policy/vision.py), and FSDP2 takes
    the first module to run forward as its root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    block_names = set(getattr(model, "_no_split_modules", None) or [])
    if not block_names:
        raise ValueError(f"trainer.strategy fsdp2: {type(model).__name__} lists no transformer blocks "
                         "(_no_split_modules), so there is nothing to shard by layer")
    units = [m for m in model.modules() if type(m).__name__ in block_names]
    tower = vision_tower(model)
    if tower is not None:
        units.append(tower)
    for m in units:
        fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    units.append(model)
    for m in units:
        m.set_gradient_divide_factor(1.0)
        m.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no PREMUL_SUM; NCCL zero-copy likes SUM)
    state = model._get_fsdp_state()  # torch has no public lazy init; FSDP2 would pick the vision tower as root
    state._lazy_init()
    return units


def rebuild_optimizer(optimizer, params: list):
    """The same kind of optimizer with the same settings over `params` (the sharded parameters); it must not
    have stepped yet (load_trainer_state comes after sharding)."""
    import inspect

    if optimizer.state:
        raise RuntimeError("trainer.strategy fsdp2: the model is sharded before the first step and before "
                           "load_trainer_state")
    keys = inspect.signature(type(optimizer)).parameters
    return type(optimizer)(params, **{k: v for k, v in optimizer.defaults.items() if k in keys})


def _full(t):
    """A DTensor's full tensor (a collective: every rank calls it for the same tensors, in the same order)."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def full_state_dict(model, rank: int) -> dict[str, torch.Tensor]:
    """The unsharded weights under the module's own names (the same keys as an unsharded `state_dict()`),
    detached on the CPU, on rank 0; {} on the other ranks. Collective: every rank must call it."""
    out: dict[str, torch.Tensor] = {}
    # tied weights (one parameter under two names, e.g. embeddings and output head) are gathered once and
    # stay one tensor, so save_pretrained drops the tied copy as it does unsharded. Keyed by the parameter
    # (state_dict() hands out a new DTensor per name), which every rank sees the same way: the same gathers.
    param_of = {name: id(p) for name, p in model.named_parameters(remove_duplicate=False)}
    done: dict[int, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        key = param_of.get(k, id(v))
        if key not in done:
            full = _full(v.detach())
            done[key] = full.cpu() if rank == 0 else None
        if rank == 0:
            out[k] = done[key]
    return out


def full_optimizer_state(optimizer) -> dict:
    """`optimizer.state_dict()` with every sharded state tensor gathered whole (collective); integer parameter
    ids and param_groups as an unsharded optimizer over the same parameter list has them."""
    sd = optimizer.state_dict()
    state = {i: {k: _full(v).cpu() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
             for i, s in sorted(sd["state"].items())}
    return {"state": state, "param_groups": sd["param_groups"]}


def shard_optimizer_state(optimizer, full: dict) -> None:
    """Load a full optimizer state dict (from either strategy's checkpoint) into an optimizer over sharded
    parameters: each rank keeps the slices of its own shards (no communication: every rank read the file)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = [p for g in optimizer.param_groups for p in g["params"]]
    state = {}
    for i, s in full["state"].items():
        p = params[int(i)]
        state[i] = {k: distribute_tensor(v.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
                    if isinstance(p, DTensor) and isinstance(v, torch.Tensor) and v.shape == p.shape else v
                    for k, v in s.items()}
    optimizer.load_state_dict({"state": state, "param_groups": full["param_groups"]})


def global_norm(norm) -> torch.Tensor:
    """clip_grad_norm_'s result as a plain tensor (over DTensor gradients it is a DTensor: the global norm)."""
    return _full(norm)
