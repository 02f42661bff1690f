"""
Checkpoint files: atomic writes (files.py), rotation, finding the newest one that loads, and moving model and
optimizer state between the full format and every parallel mode.

Full format (default): one `ckpt_<iter>.pt` whose 'model' is a plain state_dict and whose 'optimizer' is keyed by
parameter name (torch.distributed.checkpoint's full optimizer state dict), the same whether it was written by a
single process, DDP, ZeRO-1 or FSDP, so it moves between all of them and any world size.
Sharded format (FSDP): a `ckpt_<iter>/` folder written by torch.distributed.checkpoint, one shard per rank, plus
train_state.pt with everything else; it resumes only under the same world size.
"""
import glob
import os
import re
import shutil
import sys

import torch
import torch.distributed as dist

from files import atomic_write
from model import GPT, GPTConfig
from process_group import any_rank, from_rank_0

# torch.distributed.checkpoint is imported inside the functions that use it: it adds a second to every start-up


def save(obj, path):
    """Atomically: a crash leaves the old file or the new one."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load(path):
    """A full checkpoint file, or the train_state.pt of a sharded checkpoint folder (its 'sharded' key says so)."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, '.metadata')):
            raise FileNotFoundError(f"{path} has no .metadata: an incomplete sharded checkpoint")
        state = torch.load(os.path.join(path, 'train_state.pt'), map_location='cpu', weights_only=True)
        return {**state, 'sharded': path}
    # mmap: tensors are read from the page cache when used, so the ranks of one node share one copy of the file
    return torch.load(path, map_location='cpu', weights_only=True, mmap=True)


def list_checkpoints(directory):
    """ckpt_<iter>.pt files and ckpt_<iter>/ sharded folders in directory, newest (highest iteration) first."""
    found = [(int(m.group(1)), p) for p in glob.glob(os.path.join(directory, 'ckpt_*'))
             if (m := re.fullmatch(r'ckpt_(\d+)(\.pt)?', os.path.basename(p)))]
    return [p for _, p in sorted(found, reverse=True)]


def recover_interrupted_swap(directory):
    """A crash while save_sharded swapped ckpt_<iter>.tmp/ in for an existing ckpt_<iter>/ can leave the old one
    as ckpt_<iter>.old/ and no ckpt_<iter>/: put back the new one if it is complete, else the old. Rank 0 only,
    at start-up, before any writer of this run exists."""
    for old in glob.glob(os.path.join(directory, 'ckpt_*.old')):
        path, tmp = old[:-len('.old')], old[:-len('.old')] + '.tmp'
        if os.path.exists(path):
            continue
        complete = all(os.path.isfile(os.path.join(tmp, f)) for f in ('.metadata', 'train_state.pt'))
        os.replace(tmp if complete else old, path)
    # a checkpoint file whose writer was killed (kill -9) is only its temp file, named by the writer's pid: removed
    # once that process is gone (a live one may be another run's, e.g. an eval_only next to a training run)
    for leftover in glob.glob(os.path.join(directory, 'ckpt_*.pt.*.tmp')) + \
            glob.glob(os.path.join(directory, 'best.pt.*.tmp')):
        pid = leftover.rsplit('.', 2)[-2]
        if pid.isdigit() and not process_alive(int(pid)):
            os.remove(leftover)


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def remove(path):
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def load_newest(paths):
    """(checkpoint, path) of the first of paths that loads; unreadable ones (truncated by a crash) are skipped."""
    for path in paths:
        try:
            return load(path), path
        except Exception as e:
            print(f"warning: skipping unreadable checkpoint {path} ({type(e).__name__})", file=sys.stderr)
    return None, None


class LoadError(Exception):
    """Why there is no model to sample from or evaluate, in one line."""


def load_model(out_dir='out', ckpt='', init_from='', data_dir=''):
    """The model to sample from or evaluate: a Hugging Face folder or hub name (init_from, through convert.py), a
    checkpoint file (ckpt), or the newest loadable checkpoint in out_dir. Returns (model, tokenizer spec or None,
    the folder the tokenizer's files are in, iteration, source); LoadError names what is missing."""
    if init_from:
        import convert  # the Hugging Face side, only for its sources
        try:
            model, spec = convert.load_hf(convert.resolve_hf(init_from))
        except convert.ConversionError as e:
            raise LoadError(str(e))
        return model, spec, data_dir, 0, init_from
    if ckpt:
        if not os.path.exists(ckpt):
            raise LoadError(f"checkpoint {ckpt!r} not found")
        try:
            checkpoint, path = load(ckpt), ckpt
        except Exception as e:
            raise LoadError(f"cannot read checkpoint {ckpt!r} ({type(e).__name__})")
    else:
        checkpoint, path = load_newest(list_checkpoints(out_dir))
        if checkpoint is None:
            raise LoadError(f"no loadable checkpoint in {out_dir!r}")
    if 'sharded' in checkpoint:
        raise LoadError(f"{path} is a sharded checkpoint, which only train.py resumes (under FSDP on "
                        f"{checkpoint['world_size']} ranks); pass --ckpt=PATH of a full one (checkpoint_format='full')")
    model = GPT(GPTConfig(**checkpoint['model_args']))
    model.load_state_dict(checkpoint['model'])
    return model, (checkpoint.get('meta') or {}).get('tokenizer'), dataset_dir(checkpoint, data_dir), \
        checkpoint['iter_num'], path


def dataset_dir(checkpoint, data_dir=''):
    """Where the tokenizer's files of a checkpoint are: data_dir, else the dataset folder it was trained on."""
    config = checkpoint.get('config') or {}
    return data_dir or config.get('data_dir') or os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data',
                                                              config.get('dataset', ''))


class ResumeError(Exception):
    """Why a run cannot resume, in one line (the same on every rank)."""


def load_for_resume(out_dir, resume_from='', eval_only=False):
    """(checkpoint, path) that every rank resumes from. Collective: rank 0 picks the newest checkpoint that loads
    (resume_from, else out_dir's ckpt_<iter>, else best.pt for eval_only) and the other ranks load that path, so
    none falls back to another one (a filesystem not shared by all nodes, a read error); all then check that
    they read the same iteration."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    problem = path = checkpoint = None
    if rank == 0:
        if resume_from:
            candidates = [resume_from] if os.path.exists(resume_from) else []
            problem = None if candidates else f"resume_from={resume_from!r}: no such file"
        else:
            candidates = list_checkpoints(out_dir)
            if eval_only and not candidates and os.path.isfile(os.path.join(out_dir, 'best.pt')):
                candidates = [os.path.join(out_dir, 'best.pt')]
            problem = None if candidates else f"no checkpoint to resume in {out_dir!r} (looked for ckpt_<iter>.pt)"
        if candidates:
            checkpoint, path = load_newest(candidates)
            problem = None if checkpoint is not None else f"no loadable checkpoint among {', '.join(candidates)}"
    problem, path = from_rank_0((problem, path))
    if problem:
        raise ResumeError(problem)
    if rank != 0:
        try:
            checkpoint = load(path)
        except Exception as e:  # only this rank knows: it says so
            print(f"error: rank {rank} cannot read {path} ({type(e).__name__}: {e}); every rank must see the "
                  f"checkpoint rank 0 resumes (a filesystem shared by all nodes)", file=sys.stderr)
    if any_rank(checkpoint is None):
        raise ResumeError(f"not every rank could read {path} (the failing ranks say why)")
    first = from_rank_0(checkpoint['iter_num'])
    if any_rank(checkpoint['iter_num'] != first):
        raise ResumeError(f"ranks read different checkpoints from {path}: rank 0 is at iteration {first}")
    return checkpoint, path


def _zero_names(raw_model, optimizer):
    """Parameter names in the order ZeroRedundancyOptimizer numbers them (its param groups, concatenated)."""
    names = {id(p): n for n, p in raw_model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group['params']]


def full_state(model, raw_model, optimizers, zero):
    """(model_state, optimizer_state) in the full format; only rank 0's are complete. Collective: all ranks call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    if zero:
        [optimizer] = optimizers
        optimizer.consolidate_state_dict(to=0)
        model_state = get_model_state_dict(model, options=full)
        if dist.get_rank() != 0:
            return model_state, {}
        by_id = optimizer.state_dict()
        names = _zero_names(raw_model, optimizer)
        groups = [{**g, 'params': [names[i] for i in g['params']]} for g in by_id['param_groups']]
        return model_state, {'state': {names[i]: s for i, s in by_id['state'].items()}, 'param_groups': groups}
    return get_state_dict(model, optimizers, options=full)


def load_full_model_state(model, state):
    """A full-format model state into a sharded (FSDP) model: each rank keeps its part."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def load_optimizer_state(model, raw_model, optimizers, state, zero):
    """Load a full-format optimizer state into any mode; every rank passes the whole state."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    if zero:
        [optimizer] = optimizers
        index = {n: i for i, n in enumerate(_zero_names(raw_model, optimizer))}
        groups = [{**g, 'params': [index[n] for n in g['params']]} for g in state['param_groups']]
        optimizer.load_state_dict({'state': {index[n]: s for n, s in state['state'].items()}, 'param_groups': groups})
    else:
        set_optimizer_state_dict(model, optimizers, state, options=StateDictOptions(full_state_dict=True))


def save_training(model, raw_model, optimizers, zero, train_state, out_dir, sharded, best, master):
    """ckpt_<iter> of a training run (best=True: best.pt too, full format only). Collective: every rank calls it.
    Returns (path, '' or why this rank's write failed); a failed write leaves every earlier file as it was."""
    path = os.path.join(out_dir, f"ckpt_{train_state['iter_num']}")
    if sharded:
        return path, save_sharded(model, optimizers, train_state, path, master)
    model_state, optim_state = full_state(model, raw_model, optimizers, zero)
    path += '.pt'
    failed = ''
    if master:
        ckpt = {'model': model_state, 'optimizer': optim_state, **train_state}
        for target in [path] + ([os.path.join(out_dir, 'best.pt')] if best else []):
            try:
                save(ckpt, target)
            except OSError as e:
                failed = failed or f"could not write {target}: {e.strerror or e}"
    return path, failed


def restore_training(checkpoint, model, raw_model, optimizers, scaler, zero):
    """A resumed run's optimizer and scaler state; returns (iter_num, best_val_loss, tokens_seen). Loading an
    optimizer state also loads the saved groups' lr, base_lr, weight_decay, betas...: this run's settings win, so
    a resumed run follows the schedule and hyperparameters of its own command line."""
    settings = [[{k: v for k, v in g.items() if k != 'params'} for g in opt.param_groups] for opt in optimizers]
    if 'sharded' in checkpoint:
        load_sharded(model, optimizers, checkpoint['sharded'])
    elif checkpoint.get('optimizer'):  # an imported model (convert.py import) starts with a fresh optimizer
        load_optimizer_state(model, raw_model, optimizers, checkpoint['optimizer'], zero)
    for opt, groups in zip(optimizers, settings):
        for group, own in zip(opt.param_groups, groups):
            group.update(own)
    if 'scaler' in checkpoint:
        scaler.load_state_dict(checkpoint['scaler'])
    return checkpoint['iter_num'], checkpoint['best_val_loss'], checkpoint['tokens_seen']


def save_sharded(model, optimizers, train_state, path, master):
    """Each rank writes its shards into path.tmp; rank 0 adds train_state.pt and swaps the folder into place.
    Collective. Returns '' or why this rank failed; if any rank fails, every rank stops saving and the previous
    checkpoint (path included, if it was there) is left as it was."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict
    tmp, old = path + '.tmp', path + '.old'
    failed = ''
    if master:
        try:
            for leftover in (tmp, old):  # a crash's leftovers
                if os.path.exists(leftover):
                    shutil.rmtree(leftover)
        except OSError as e:
            failed = f"could not remove {leftover}: {e.strerror or e}"
    if any_rank(failed):
        return failed
    model_state, optim_state = get_state_dict(model, optimizers)
    try:
        dcp.save({'model': model_state, 'optimizer': optim_state}, checkpoint_id=tmp)
    except CheckpointException as e:  # gathers every rank's write errors and raises on each (a BaseException)
        exc = next(iter(e.failures.values()))[0]
        cause = getattr(exc, 'strerror', None) or str(exc) or type(exc).__name__
        failed = f"could not write {tmp}: {cause.splitlines()[0]}"
        return failed if master else ''  # the same verdict on every rank: rank 0 says it
    if not master:
        return failed
    try:
        save(train_state, os.path.join(tmp, 'train_state.pt'))
        if os.path.exists(path):  # resumed from an older checkpoint, training reached this iteration again
            os.replace(path, old)  # a folder cannot be renamed over a non-empty one
        try:
            os.replace(tmp, path)
        except OSError:
            if os.path.exists(old):
                os.replace(old, path)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        failed = f"could not move {tmp} to {path}: {e.strerror or e}"
    return failed


def load_sharded(model, optimizers, path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    model_state, optim_state = get_state_dict(model, optimizers)
    state = {'model': model_state, 'optimizer': optim_state}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizers, model_state_dict=state['model'], optim_state_dict=state['optimizer'])
