"""A straightforward MD-MNIST generator in the style of the thesis code: the benchmark's reference.

Per sample: draw attributes with Python's ``random``, resize each digit with Pillow, colour it
by stacking channels, paste it onto a black canvas, save one PNG file per sample with Pillow's
default settings, and append the description to one text file. Same layout rules as
t2i_data.mdmnist, so both do the same work; only the engineering differs.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image

SIZES, COLORS, POSITIONS = (20, 30, 40), ("w", "r", "g", "b"), ("up", "middle", "down")


def generate(images: np.ndarray, labels: np.ndarray, n: int, out: Path, seed: int = 0) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(seed)
    with open(out / "descriptions.txt", "a") as desc_file:
        for i in range(n):
            canvas = Image.new("RGB", (128, 128))
            words = []
            for d in range(3):
                j = rnd.randrange(len(images))
                size, color, pos = rnd.choice(SIZES), rnd.choice(COLORS), rnd.randrange(3)
                digit = np.asarray(Image.fromarray(images[j]).resize((size, size), Image.BILINEAR))
                zero = np.zeros_like(digit)
                rgb = {"w": (digit, digit, digit), "r": (digit, zero, zero), "g": (zero, digit, zero), "b": (zero, zero, digit)}[color]
                off = (40 - size) // 2
                canvas.paste(Image.fromarray(np.stack(rgb, axis=2)), (2 * (d + 1) + 40 * d + off, 2 * (pos + 1) + 40 * pos + off))
                words += [str(labels[j]), str(size), color, POSITIONS[pos]]
            canvas.save(out / f"{i}.png")
            desc_file.write(" ".join(words) + "\n")
