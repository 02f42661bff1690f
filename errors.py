"""
The one way every script stops on a bad setting or input: `error: <message>` on stderr, a non-zero exit status,
never a traceback. Imports nothing heavy, so the data scripts can use it without torch.
"""
import os
import sys
import time


def die(message, status=2, every_rank_alike=True):
    """Print `error: message` and exit with status (2: a bad setting or input).

    Under torchrun a verdict every rank reaches alike (every_rank_alike=True, none in the middle of a collective)
    is said once, by rank 0; one that only this rank may have met (a file it cannot read) it says itself, naming
    its rank. Any process group is closed first, so no rank hangs in it."""
    # only a process that imported torch.distributed takes part in a launch: a data script started by one does not
    dist = sys.modules.get('torch.distributed')
    # the launch's rank, not the group's: train.py dies on bad settings before the group exists
    rank = int(os.environ.get('RANK', 0)) if dist is not None else 0
    if rank == 0 or not every_rank_alike:
        print(f"error: {f'rank {rank}: ' if rank else ''}{message}", file=sys.stderr)
    else:
        time.sleep(3)  # torchrun stops every worker once one exits: let rank 0 say why first
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    sys.exit(status)
