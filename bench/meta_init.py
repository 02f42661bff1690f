"""
What building a model costs each FSDP rank in host memory: on the meta device, sharded, then filled in place
(what train.py does under FSDP), against building the whole model first (what it did before).

    python bench/meta_init.py config/full_llama_1.36b.py --ranks 2
    python bench/meta_init.py config/full_llama_124m.py --ranks 2 --direct

Runs `torchrun --nproc_per_node=RANKS` on the CPU (gloo) and prints, per rank, the growth of peak resident memory
while the model is built, sharded and initialised, the time it took, and the fp32 size of the whole model.
"""
import argparse
import json
import os
import runpy
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from errors import die  # noqa: E402

WORKER = r'''
import json, resource, sys, time, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[1])
import process_group
from model import GPT, GPTConfig
from torch.distributed.fsdp import fully_shard
process_group.init('cpu')
config = GPTConfig.from_preset(**json.loads(sys.argv[2]))
direct = sys.argv[3] == 'direct'
before, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.time()
torch.manual_seed(0)
with torch.device('cpu' if direct else 'meta'):
    model = GPT(config)
for block in model.blocks:
    fully_shard(block)
fully_shard(model)
if not direct:
    model.to_empty(device='cpu')
    model.init_weights()
dist.barrier()
with open(f'{sys.argv[4]}/rank{dist.get_rank()}.json', 'w') as f:  # a file each: printed lines would interleave
    json.dump({'rank': dist.get_rank(), 'seconds': time.time() - start,
               'grown_mib': (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024,
               'model_mib': 4 * sum(p.numel() for p in model.parameters()) / 2 ** 20}, f)
dist.destroy_process_group()
'''


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='a config file (its architecture settings are used)')
    parser.add_argument('--ranks', type=int, default=2)
    parser.add_argument('--direct', action='store_true', help='build the whole model on every rank, then shard')
    args = parser.parse_args(argv)
    if not os.path.isfile(args.config):
        die(f"config file not found: {args.config}")
    from model import GPTConfig
    settings = runpy.run_path(args.config)
    arch = {k: settings[k] for k in GPTConfig.__dataclass_fields__ if k in settings}
    arch['name'] = settings.get('arch_preset', 'gpt2')
    with tempfile.TemporaryDirectory() as work:
        worker = os.path.join(work, 'worker.py')
        with open(worker, 'w') as f:
            f.write(WORKER)
        done = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone',
                               f'--nproc_per_node={args.ranks}', worker, ROOT, json.dumps(arch),
                               'direct' if args.direct else 'meta', work],
                              capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'})
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            return 1
        reports = []
        for rank in range(args.ranks):
            with open(os.path.join(work, f'rank{rank}.json')) as f:
                reports.append(json.load(f))
    for r in reports:
        print(f"rank {r['rank']}: {'direct' if args.direct else 'meta'} build + shard + init {r['seconds']:.1f} s, "
              f"peak memory +{r['grown_mib']:,.0f} MiB (whole model in fp32: {r['model_mib']:,.0f} MiB)")
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
