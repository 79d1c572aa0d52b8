"""Images in and out of the model server: JPEG decode, resize, ImageNet normalization; test JPEGs.

Preprocessing follows torchvision's ImageNet evaluation transform scaled to the model's resolution
R: resize the shorter side to ``R * 256 / 224`` (bilinear), center-crop ``R x R``, scale to [0, 1],
normalize with the ImageNet mean/std, lay out as CHW float32.
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from infadapter.errors import BadInput

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# Decompression-bomb guard: an instance larger than this many pixels is refused, not decoded.
MAX_PIXELS = 4096 * 4096


def decode_b64(text: str) -> bytes:
    """Base64 (standard or URL-safe alphabet, as TF Serving accepts) to bytes; BadInput otherwise."""
    if not isinstance(text, str):
        raise BadInput("b64: must be a base64 string")
    try:
        alt = b"-_" if ("-" in text or "_" in text) else None
        return base64.b64decode(text, altchars=alt, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput("b64: not valid base64") from None


def preprocess(data: bytes, resolution: int) -> np.ndarray:
    """Encoded image bytes -> normalized float32 array ``[3, R, R]``."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PIXELS:
                raise BadInput(f"b64: image of {img.width}x{img.height} pixels is larger than {MAX_PIXELS} pixels")
            # draft() lets the JPEG decoder scale by 1/2..1/8 while decoding: far cheaper for big images.
            short = round(resolution * 256 / 224)
            img.draft("RGB", (short, short))
            rgb = img.convert("RGB")
    except Image.DecompressionBombError:  # Pillow's own guard, which fires first for the largest claims
        raise BadInput(f"b64: image is larger than {MAX_PIXELS} pixels (a decompression bomb?)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise BadInput("b64: not a decodable image (JPEG or PNG expected)") from None
    w, h = rgb.size
    scale = short / min(w, h)
    rgb = rgb.resize((max(short, round(w * scale)), max(short, round(h * scale))), Image.Resampling.BILINEAR)
    w, h = rgb.size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    rgb = rgb.crop((left, top, left + resolution, top + resolution))
    arr = np.asarray(rgb, dtype=np.float32) / np.float32(255.0)
    arr = (arr - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def make_jpeg(width: int = 320, height: int = 240, seed: int = 0, quality: int = 85) -> bytes:
    """A deterministic, photo-like test JPEG (smooth gradients plus noise), encoded with Pillow."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, 3)
    freq = rng.uniform(0.01, 0.05, 3)
    chans = [127 + 100 * np.sin(freq[c] * (xx + 0.7 * yy) + phase[c]) for c in range(3)]
    img = np.stack(chans, axis=-1) + rng.normal(0, 12, (height, width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_jpeg_b64(width: int = 320, height: int = 240, seed: int = 0) -> str:
    """:func:`make_jpeg`, base64-encoded for a ``{"b64": ...}`` instance."""
    return base64.b64encode(make_jpeg(width, height, seed)).decode("ascii")
