"""Run under torchrun by test_train_prior: one DDP step of window_loss on a fixed global batch;
rank 0 saves the gradients for the test to compare with a single process."""
import sys

import torch

from t2i_models.prior_builders import g1_tiny
from t2i_models.train_prior import window_loss


def global_batch():
    g = torch.Generator().manual_seed(11)
    text = torch.randint(0, 20, (8, 12), generator=g)
    image = torch.randint(0, 16, (8, 16), generator=g)
    valid = torch.tensor([True] * 6 + [False] * 2)  # padding entries on the second rank only
    return {"text": text, "image": image, "valid": valid}


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


if __name__ == "__main__":
    torch.distributed.init_process_group("gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    torch.manual_seed(0)
    model = g1_tiny(image_vocab=16, grid=4)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    b = global_batch()
    part = {k: v[rank * 4 : (rank + 1) * 4] for k, v in b.items()}
    losses, mean, valid = window_loss(ddp, [part], torch.device("cpu"), False, world)
    for loss in losses:
        loss.backward()
    if rank == 0:
        torch.save({"grads": grads(model), "valid": valid}, sys.argv[1])
    torch.distributed.barrier()  # no rank tears gloo down while another still works: that aborts it
    # no destroy_process_group(): with gloo it can abort the process (std::terminate) under load
