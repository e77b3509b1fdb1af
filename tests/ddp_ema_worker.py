"""Started twice by tests/test_ddp_ema.py (RANK 0 and 1, WORLD_SIZE 2, gloo on 127.0.0.1): each
rank runs every case below on its half of fixed global batches and saves what it ends with; the
test runs the same functions in one process on the whole batches and compares. Everything is in
float64, so the only difference left between 1 and 2 processes is the order of the sums (see the
test's docstring).

Cases: "book" and "loss_book" drive ``EMACodebook`` / ``LossCodebook`` directly (start from the
first batch, EMA steps, dead-code restarts) on unequal parts of each batch (9 and 15 of 24 rows);
the model cases take DDP training steps (forward, backward, SGD) of a tiny VQ-VAE (EMA and loss
codebooks), VQ-VAE-2 (both levels) and the study's VQ-VAE (EMA and loss codebooks) on equal
halves (DDP averages the ranks' mean losses, the global mean only for equal parts). Then, with
``t2i_models.vqvae._sum_statistics`` replaced by the identity (the behaviour before the
all-reduce: each rank's own statistics; under DDP ``broadcast_buffers`` then hands every rank
rank 0's), "book" and "vqvae" again, as "book_noreduce" and "vqvae_noreduce": the test checks that
they differ from one process, so its comparison can fail.

Usage: python ddp_ema_worker.py OUT_DIR PORT   (RANK and WORLD_SIZE in the environment)
"""
from __future__ import annotations

import os
import sys
from datetime import timedelta

import torch
from torch import nn

from t2i_models.vqvae import EMACodebook, LossCodebook, VQVAE, VQVAEConfig
from t2i_models.vqvae2 import VQVAE2, VQVAE2Config
from t2i_models.vqvae_study import VQVAEStudy, VQVAEStudyConfig

STEPS = 4
ROWS = 24  # global rows per step in the codebook cases
BOOK_SPLIT = (9, 15)  # rows of rank 0 and rank 1 in the codebook cases (sums to ROWS)
IMAGES = 4  # global images per step in the model cases (2 per rank)
MODELS = {
    "vqvae": lambda: VQVAE(VQVAEConfig(vocab_size=8, dim=4, hidden=8, downsamples=1, n_rd=1, n_rb=1, image_size=8, decay=0.8,
                                       restart_threshold=0.3)),
    "vqvae_loss": lambda: VQVAE(VQVAEConfig(vocab_size=8, dim=4, hidden=8, downsamples=1, n_rd=1, n_rb=1, image_size=8, decay=0.8,
                                            restart_threshold=0.3, codebook="loss")),
    "vqvae2": lambda: VQVAE2(VQVAE2Config(image_size=16, hidden=8, res_hidden=4, n_res=1, dim=4, vocab_top=6, vocab_bottom=8, decay=0.8,
                                          restart_threshold=0.3)),
    "vqvae_study": lambda: VQVAEStudy(VQVAEStudyConfig(image_size=8, hidden=8, dim=4, vocab_size=8, blocks=2, downsamples=1, decay=0.8,
                                                       restart_threshold=0.3, codebook="ema")),
    "vqvae_study_loss": lambda: VQVAEStudy(VQVAEStudyConfig(image_size=8, hidden=8, dim=4, vocab_size=8, blocks=2, downsamples=1,
                                                            decay=0.8, restart_threshold=0.3)),
}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def part(t: torch.Tensor, rank: int, world: int, sizes: tuple[int, ...] | None = None) -> torch.Tensor:
    """This rank's rows of a global batch: the rank-th of ``world`` consecutive slices, of
    ``sizes`` rows (with 2 processes) or equal; one process takes the whole batch."""
    if world == 1:
        return t
    sizes = sizes or (len(t) // world,) * world
    start = sum(sizes[:rank])
    return t[start : start + sizes[rank]]


def book_batches() -> list[torch.Tensor]:
    """STEPS + 1 global batches (ROWS, 3) float64: four clusters, each step's halves drawn from
    different clusters, so some codes are used on one rank only."""
    g = gen(5)
    centres = torch.tensor([[0.0, 0, 0], [4, 0, 0], [0, 4, 0], [0, 0, 4]], dtype=torch.float64)
    out = []
    for s in range(STEPS + 1):
        which = torch.cat([torch.randint(0, 3, (ROWS // 2,), generator=g), torch.randint(1 + s % 3, 4, (ROWS // 2,), generator=g)])
        out.append(centres[which] + 0.5 * torch.randn(ROWS, 3, generator=g, dtype=torch.float64))
    return out


def run_book(kind: str, rank: int, world: int) -> dict:
    """A codebook of 12 codes of dimension 3 (``kind`` "book": EMA, "loss_book": loss-learned):
    ``init_from`` the first batch, then per step ``nearest``, ``update``, ``restart_dead``."""
    book = (EMACodebook if kind == "book" else LossCodebook)(12, 3, 0.8, 1e-5, gen(1)).double()
    batches = [part(b, rank, world, BOOK_SPLIT) for b in book_batches()]
    book.init_from(batches[0], gen(2))
    counts, restarted = [], []
    for s, z in enumerate(batches[1:]):
        idx = book.nearest(z)
        counts.append(torch.bincount(idx, minlength=12))  # this rank's n_i, before the sum over ranks
        book.update(z, idx)
        restarted.append(book.restart_dead(z, 0.5, gen(10 + s)))
    return {"state": {k: v.clone() for k, v in book.state_dict().items()}, "counts": torch.stack(counts), "restarted": torch.stack(restarted)}


def image_batches(size: int) -> list[torch.Tensor]:
    g = gen(6)
    return [torch.rand(IMAGES, 3, size, size, generator=g, dtype=torch.float64) for _ in range(STEPS + 1)]


def _flat(z: torch.Tensor) -> torch.Tensor:
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def _eval_batchnorm(model: nn.Module) -> None:
    """BatchNorm on its running statistics: an image's encoder output then does not depend on the
    rest of its batch (with batch statistics, half a batch normalises differently from the whole,
    and the comparison would test BatchNorm, not the codebook)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


@torch.no_grad()
def _start_books(model: nn.Module, x: torch.Tensor) -> None:
    """The codebook part of ``init_output_bias`` (each codebook from the first batch's latents);
    the output bias is left alone, since it is rank 0's under DDP by design."""
    if isinstance(model, VQVAE2):
        f_b = model.bottom_features(x)
        z_t = model.top_latents(f_b)
        model.codebook_top.init_from(_flat(z_t), gen(2))
        q_t = model._embed("top", model._nearest(model.codebook_top, z_t))
        model.codebook_bottom.init_from(_flat(model.bottom_latents(f_b, q_t)), gen(3))
    else:
        model.codebook.init_from(_flat(model.latents(x)), gen(2))


def run_model(kind: str, rank: int, world: int) -> dict:
    """STEPS DDP training steps (forward with the EMA update and restarts, backward, SGD) of a tiny
    model of ``kind`` on this rank's half of each global batch. Returns the whole state dict and
    each step's codes used on this rank (before the sum over ranks)."""
    torch.manual_seed(0)
    model = MODELS[kind]().double()
    size = model.cfg.image_size
    batches = [part(b, rank, world) for b in image_batches(size)]
    model.eval()
    _start_books(model, batches[0])
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    used = []
    for s, x in enumerate(batches[1:]):
        model.train()
        _eval_batchnorm(model)
        out = net(x, step=s, generator=gen(20 + s))
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        used.append(torch.stack([out[k].detach().double() for k in sorted(out) if k.startswith("used")]))
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()}, "used": torch.stack(used)}


def run_all(rank: int, world: int) -> dict:
    res = {k: run_book(k, rank, world) for k in ("book", "loss_book")}
    res.update({k: run_model(k, rank, world) for k in MODELS})
    return res


if __name__ == "__main__":
    out_dir, port = sys.argv[1], int(sys.argv[2])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                         timeout=timedelta(seconds=120))  # a lost peer ends the run instead of hanging it
    res = run_all(rank, world)
    import t2i_models.vqvae as vqvae

    vqvae._sum_statistics = lambda t: t  # the old behaviour: each rank's own statistics
    res["book_noreduce"] = run_book("book", rank, world)
    res["vqvae_noreduce"] = run_model("vqvae", rank, world)
    torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.barrier()  # no rank tears gloo down while another still works: that aborts it
    # no destroy_process_group(): with gloo it can abort the process (std::terminate) under load
