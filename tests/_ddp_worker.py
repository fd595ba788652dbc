"""Run by tests/test_training.py under `torch.distributed.run --nproc-per-node 2` (Gloo, CPU):
data-parallel fit, then a resumed fit from rank 0's checkpoint. Writes each rank's weights and
facts into the folder given as argv[1]."""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import smooth_images, tiny_embedder  # noqa: E402

from samlearn import SAMEmbedder  # noqa: E402

out = sys.argv[1]
rank = int(os.environ["RANK"])
writes = []
_orig = SAMEmbedder._write_checkpoint


def _recording(self, path, *args, **kwargs):
    writes.append(int(os.environ["RANK"]))
    return _orig(self, path, *args, **kwargs)


SAMEmbedder._write_checkpoint = _recording
imgs = smooth_images(4, ndim=2, seed=0)
ckpt = os.path.join(out, "ckpt.samlearn")
first = tiny_embedder(random_state=0, max_iter=4, checkpoint_path=ckpt, checkpoint_every=2,
                      distributed=True).fit(imgs)
torch.save(first.network_.state_dict(), os.path.join(out, f"rank{rank}_first.pt"))
resumed = tiny_embedder(random_state=0, max_iter=6, checkpoint_path=ckpt, resume=True,
                        distributed=True).fit(imgs)
torch.save(resumed.network_.state_dict(), os.path.join(out, f"rank{rank}_resumed.pt"))
facts = {"rank": first.rank_, "world_size": first.world_size_, "n_iter_first": first.n_iter_,
         "n_iter_resumed": resumed.n_iter_, "history_resumed": [h["iteration"] for h in resumed.history_],
         "loss_first": [h["loss"] for h in first.history_], "checkpoint_writes": len(writes)}
with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
    json.dump(facts, fh)
