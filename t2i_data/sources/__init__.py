"""Sources turn raw dataset files into records; they never see tokenizers or token ids.

Each dataset is one module here that declares ``DATASET = Dataset(...)``: its loader, splits,
card text, licences, sample schema and export columns (``registry.py``, which finds them).
"""
