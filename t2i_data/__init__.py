"""t2i_data: reproducible, streamable datasets and token shards for text-to-image models."""

__version__ = "0.1.0"
