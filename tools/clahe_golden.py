#!/usr/bin/env python3
"""Writes mura-augment/tests/fixtures/clahe_opencv.bin: OpenCV's CLAHE (clip 2.0 and 4.0, 8×8 tiles) of
a 128×96 test radiograph defined by a formula that the Rust test recomputes.

Run by hand:  pip install opencv-python-headless numpy && python3 tools/clahe_golden.py
"""
import os

import cv2
import numpy as np

W, H = 128, 96
OUT = os.path.join(os.path.dirname(__file__), "..", "mura-augment", "tests", "fixtures", "clahe_opencv.bin")


def image():
    # Keep in step with `test_radiograph` in mura-augment/tests/augment.rs.
    x = np.arange(W)[None, :].repeat(H, 0)
    y = np.arange(H)[:, None].repeat(W, 1)
    bone = (np.abs(x - 64 - (y - 48) // 4) < 14).astype(np.int64)
    v = 40 + (x * 30) // W + bone * (90 + (y * 20) // H) + ((x * 7 + y * 13) % 9)
    return v.astype(np.uint8)


def main():
    img = image()
    outs = [cv2.createCLAHE(clipLimit=c, tileGridSize=(8, 8)).apply(img) for c in (2.0, 4.0)]
    with open(OUT, "wb") as f:
        f.write(img.tobytes())
        for o in outs:
            f.write(o.tobytes())


if __name__ == "__main__":
    main()
