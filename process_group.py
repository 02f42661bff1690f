"""
The process group of a torchrun launch, the collectives through which train.py and eval.py ranks agree, and how
a model is spread over the ranks (DDP, or FSDP's shards).

In one process (no torchrun, so no group) each function works on this process's own value.
"""
import os
import time

import torch
import torch.distributed as dist


def init(device):
    """Join the launch's process group (NCCL on GPUs, gloo on CPUs); returns this rank's device."""
    rank, world_size = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
    if device.startswith('cuda'):
        device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
        torch.cuda.set_device(device)
    # ranks restarted by torchrun (--max-restarts) meet in the same store as the ranks before them: keys under a
    # prefix of their own, so no rank reads a dead one's address
    store, _, _ = next(dist.rendezvous('env://', rank, world_size))
    store = dist.PrefixStore(meeting_prefix(store, rank, world_size), store)
    dist.init_process_group('nccl' if device.startswith('cuda') else 'gloo', store=store, rank=rank,
                            world_size=world_size)
    return device


def meeting_prefix(store, rank, world_size):
    """A store prefix that every rank of this start of the workers shares and no earlier start used.

    Not TORCHELASTIC_RESTART_COUNT: each node's agent counts its own workers' failures, so after a worker on one
    node dies it is 1 there and still 0 on the others, which then read the dead ranks' keys. Rank 0 takes a fresh
    number; every other rank takes a ticket (unique to its process) and joins under the number it finds, joining
    again if a new number appears (the one it found was a dead rank 0's); once all have joined, rank 0 answers each
    ticket. Polled with check(), which returns at once: a wait with a timeout would print a c10d warning at every
    retry."""
    deadline = time.monotonic() + store.timeout.total_seconds()
    if rank == 0:
        number = store.add('meeting/number', 1)
        store.set('meeting/rank0', str(number))
        keys = [f'meeting/{number}/rank{r}' for r in range(1, world_size)]
        while keys and not store.check(keys):
            if time.monotonic() > deadline:
                raise RuntimeError(f"process group: not every rank joined within {store.timeout}")
            time.sleep(0.05)
        for key in keys:
            store.set(f'meeting/answer/{store.get(key).decode()}', str(number))
        return f'meeting/{number}/'
    ticket = store.add('meeting/number', 1)  # unique to this process, so no earlier rank 0 answered it
    joined = None
    while not store.check([f'meeting/answer/{ticket}']):
        if store.check(['meeting/rank0']):
            number = store.get('meeting/rank0').decode()
            if number != joined:
                store.set(f'meeting/{number}/rank{rank}', str(ticket))
                joined = number
        if time.monotonic() > deadline:
            raise RuntimeError(f"process group: rank 0 did not answer within {store.timeout}")
        time.sleep(0.05)
    return f"meeting/{store.get(f'meeting/answer/{ticket}').decode()}/"


def sum_over_ranks(t):
    """In place: t summed over every rank."""
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def any_rank(flag):
    """Whether flag is set on any rank: every rank gets the same answer."""
    if not dist.is_initialized():
        return bool(flag)
    device = f'cuda:{torch.cuda.current_device()}' if dist.get_backend() == 'nccl' else 'cpu'
    return bool(sum_over_ranks(torch.tensor([float(bool(flag))], device=device)).item())


def from_rank_0(value):
    """Rank 0's value (any picklable object) on every rank: one process decides, so no rank takes another path."""
    if dist.is_initialized():
        box = [value]
        dist.broadcast_object_list(box, src=0)
        value = box[0]
    return value


def parallelize(raw_model, mode, device, dtype, compile_options=None, reshard_after_forward=True):
    """The model train.py steps: raw_model itself (mode None: one process), wrapped by DDP (ddp, zero1) or sharded
    in place by FSDP2 (fsdp; raw_model was built on the meta device: each rank allocates and draws only its
    shards). compile_options: torch.compile's keyword arguments, or None not to compile."""
    if mode == 'fsdp':
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        mp_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if dtype == 'bfloat16' else MixedPrecisionPolicy()
        for block in raw_model.blocks:
            if compile_options is not None:
                block.compile(**compile_options)  # per block, before sharding
            fully_shard(block, mp_policy=mp_policy, reshard_after_forward=reshard_after_forward)
        model = fully_shard(raw_model, mp_policy=mp_policy, reshard_after_forward=reshard_after_forward)
        raw_model.to_empty(device=device)
        raw_model.init_weights()
        return model
    if compile_options is not None:
        raw_model.compile(**compile_options)  # in place: no _orig_mod. in state_dict keys
    if mode is None:
        return raw_model
    from torch.nn.parallel import DistributedDataParallel as DDP
    # broadcast_buffers=False: no buffer is state that ranks must share (the RoPE tables are constants, MoE's
    # expert_fraction is each rank's own statistic, rewritten every forward), so DDP's broadcast before every
    # forward would be traffic for nothing
    return DDP(raw_model, device_ids=[int(os.environ.get('LOCAL_RANK', 0))] if device.startswith('cuda') else None,
               broadcast_buffers=False)
