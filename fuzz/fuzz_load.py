"""Mutation fuzz of ``load(..., allow_pickle=False)`` and of the data-only unpickler behind it.

    python fuzz/fuzz_load.py ROUNDS SEED FOLDER

Every round mutates a valid pickle (protocol 5 with out-of-band buffers, and protocol 2) and a
valid dump file, and loads them in safe mode, the file by its name and as a stream. Anything but a result or a ferrojob error
(``DamagedFileError``, ``NotADumpFileError``, ``RefusedContentError``) — another exception, a
crash, a hang — is a bug: add the input to the tests. ``tests/test_untrusted_files.py`` runs a
short round of it in CI.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import pickle
import random
import sys
import zlib

import numpy as np
from ferrojob import DamagedFileError, NotADumpFileError, RefusedContentError, dump, load
from ferrojob.persistence import safe_pickle

EXPECTED = (DamagedFileError, NotADumpFileError, RefusedContentError)
VALUE = {
    "a": np.arange(20.0).reshape(4, 5),
    "s": np.array(["ab", "c"]),
    "t": (1, [2.5, "x"]),
    "b": np.arange(5)[::2],
    "d": np.dtype(">i2"),
    "n": np.int64(3),
}


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One to four byte-level edits: overwrite, delete, insert, truncate."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        if choice < 0.5 and out:
            out[rng.randrange(len(out))] = rng.randrange(256)
        elif choice < 0.7 and out:
            at = rng.randrange(len(out))
            del out[at : at + rng.randint(1, 8)]
        elif choice < 0.85:
            at = rng.randrange(len(out) + 1)
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif out:
            del out[rng.randrange(len(out)) :]
    return bytes(out)


def main(rounds: int, seed: int, folder: str) -> None:
    rng = random.Random(seed)
    buffers: list[pickle.PickleBuffer] = []
    body = pickle.dumps(VALUE, protocol=5, buffer_callback=buffers.append)
    raws = [bytes(buffer.raw()) for buffer in buffers]
    in_band = pickle.dumps(VALUE, protocol=2)
    path = os.path.join(folder, "fuzzed.fj")
    dump(VALUE, path, compress=rng.choice([0, 3, ("lz4", 1)]))
    with open(path, "rb") as handle:
        original = handle.read()
    wrapped = [gzip.compress(original), bz2.compress(original), lzma.compress(original), zlib.compress(original)]
    for _ in range(rounds):
        for data, out_of_band in ((mutate(rng, body), raws), (mutate(rng, in_band), [])):
            try:
                safe_pickle.loads(data, out_of_band)
            except EXPECTED:
                pass
        mutated = mutate(rng, original)
        with open(path, "wb") as handle:
            handle.write(mutated)
        for mode in (None, "r"):
            try:
                load(path, mmap_mode=mode, allow_pickle=False)
            except EXPECTED:
                pass
        # As a stream (read to the dump's end, as from a socket), followed by more bytes; and
        # compressed as a whole (as through gzip.open), then mutated.
        for stream in (io.BytesIO(mutated + original), io.BytesIO(mutate(rng, rng.choice(wrapped)))):
            try:
                load(stream, allow_pickle=False)
            except EXPECTED:
                pass
    print("fuzzed", rounds)


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")  # mmap_mode on a compressed dump warns: expected here
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
