"""t2i_models: the models of the thesis and what trains, samples and judges them.

- Autoencoders (image ↔ tokens): ``dvae``, ``vqvae`` on the ``blocks`` stacks; named configurations
  in ``builders.CONFIGS`` (``builders.build_autoencoder(name)``); ``encode`` turns image shards into
  image-token shards.
- Published image tokenizers read from local files as autoencoders: OpenAI's DALL·E dVAE and
  taming-transformers' VQGAN (``pretrained``: one module per family, pickles read by torch's
  ``weights_only`` unpickler only); ``checkpoint.load_autoencoder`` takes them and this project's.
- Priors (text tokens → image tokens): G1 (``g1``), G2 (``g2``), G3 (``g3``: BERT2GPT2, random or
  warm-started from local BERT / GPT-2 folders), on the ``attention`` blocks; named sizes in ``prior_builders.PRIORS``.
- The evaluation CLIP (``clip``) and what CLIP training and the prior comparison share (``clip_eval``).
- Checkpoints of all of them, their formats, loaders and the trainers' resume: ``checkpoint``.
- Training: ``train_autoencoder``, ``train_prior``, ``train_clip`` (one process or torchrun DDP, set
  up by ``distributed``). Inference: ``sample`` (prompts → a PNG grid) and ``eval_mdmnist`` (two
  priors compared on MD-MNIST); neither imports a training loop.
- The ``t2i`` command (``cli``): on top of both packages, imported by no module.
"""
