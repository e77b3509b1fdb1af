"""t2i_data: reproducible, streamable datasets and token shards for text-to-image models.

What it holds, in data-flow order (README, "Architecture", has one line per module): the dataset
registry and sources (``sources/``), image shard sets built from a seed (``mdmnist``) or
preprocessed from a registered dataset (``preprocess``, ``decode``, ``regimes``, ``dedup``), text
tokenizers and text-token shards (``text/``, ``tokenize``), the streams that feed training
(``plan``, ``stream``, ``token_stream``), and the tools around them (``verify``, ``preview``,
``inspect_shards``, ``export``). ``manifest`` is the contract between stages and its checked
reading API. Nothing here imports ``t2i_models``; the ``t2i`` command lives in ``t2i_models.cli``.
"""

__version__ = "0.1.0"
