"""dump / load: round trips, compression, memory mapping, damage, joblib files, trust."""

from __future__ import annotations

import os
import pickle
import warnings

import pytest
from ferrojob import DamagedFileError, InvalidParameterError, NotADumpFileError, dump, load
from ferrojob.persistence import parse_compress

np = pytest.importorskip("numpy")


def sample():
    return {
        "big": np.arange(3_000_000, dtype=np.float64).reshape(1000, 3000),
        "fortran": np.asfortranarray(np.ones((30, 40), dtype=np.float32)),
        "strided": np.arange(100)[::3],
        "zero_d": np.array(5),
        "objects": np.array([1, "a", None], dtype=object),
        "plain": [1, "two", {"three": 3.0}, (4,), b"bytes"],
    }


def check(loaded):
    expected = sample()
    assert loaded["plain"] == expected["plain"]
    for key in ("big", "fortran", "strided", "zero_d", "objects"):
        assert loaded[key].dtype == expected[key].dtype
        assert loaded[key].shape == expected[key].shape
        np.testing.assert_array_equal(loaded[key], expected[key])
    assert loaded["fortran"].flags.f_contiguous


@pytest.mark.parametrize("compress", [0, 3, True, 9, ("zstd", 5), ("lz4", 1), "lz4", False])
def test_round_trip(tmp_path, compress):
    path = tmp_path / "data.fj"
    assert dump(sample(), path, compress=compress) == [str(path)]
    loaded = load(path)
    check(loaded)
    assert loaded["big"].flags.writeable


def test_compression_makes_files_smaller(tmp_path):
    data = np.zeros(1_000_000)
    dump(data, tmp_path / "raw.fj")
    dump(data, tmp_path / "zstd.fj", compress=3)
    dump(data, tmp_path / "lz4.fj", compress=("lz4", 1))
    raw = os.path.getsize(tmp_path / "raw.fj")
    assert os.path.getsize(tmp_path / "zstd.fj") < raw / 100
    assert os.path.getsize(tmp_path / "lz4.fj") < raw / 50


def test_file_suffix_picks_the_codec(tmp_path):
    data = np.zeros(1_000_000)
    dump(data, tmp_path / "a.zst")
    dump(data, tmp_path / "a.lz4")
    assert os.path.getsize(tmp_path / "a.zst") < 100_000
    assert os.path.getsize(tmp_path / "a.lz4") < 100_000


@pytest.mark.parametrize("suffix", [".z", ".gz", ".bz2", ".xz", ".lzma", ".lz4", ".zst"])
def test_joblib_suffixes_compress_with_their_codec(tmp_path, suffix):
    data = {"zeros": np.zeros(2_000_000), "text": "x" * 10_000}
    path = tmp_path / f"data.pkl{suffix}"
    dump(data, path)
    assert os.path.getsize(path) < 200_000  # compressed, not 16 MB written as is
    loaded = load(path)
    assert loaded["text"] == data["text"] and not loaded["zeros"].any()


@pytest.mark.parametrize("codec", ["zlib", "gzip", "bz2", "lzma", "xz"])
def test_joblib_codecs_round_trip_every_block(tmp_path, codec):
    rng = np.random.default_rng(0)
    walk = np.round(np.cumsum(rng.standard_normal(1_500_000)), 2)  # more than one 4 MiB block
    path = tmp_path / "walk.fj"
    dump(walk, path, compress=(codec, 3))
    assert os.path.getsize(path) < walk.nbytes
    np.testing.assert_array_equal(load(path), walk)


def test_parse_compress():
    assert parse_compress(0) == ("raw", 0)
    assert parse_compress(3) == ("zstd", 1)
    assert parse_compress(9) == ("zstd", 7)
    assert parse_compress(("zstd", 19)) == ("zstd", 19)
    assert parse_compress(("lz4", 1)) == ("lz4", 1)
    assert parse_compress(("zlib", 3)) == ("zlib", 3)
    assert parse_compress("gzip") == ("gzip", 3)
    # As in joblib: the suffix picks the codec, compress its level (0: the codec's default).
    assert parse_compress(0, "x.gz") == ("gzip", 3)
    assert parse_compress(6, "x.bz2") == ("bz2", 6)
    assert parse_compress(True, "x.xz") == ("xz", 1)
    assert parse_compress(("zstd", 5), "x.gz") == ("zstd", 5)  # an explicit codec wins
    for bad in (10, -1, ("zstd", "high"), ("brotli", 1), 2.5, ("gzip", 10)):
        with pytest.raises(InvalidParameterError, match="is not a compression setting"):
            parse_compress(bad)


@pytest.mark.parametrize("mode", ["r", "r+", "c"])
def test_mmap_modes(tmp_path, mode):
    path = tmp_path / "data.fj"
    dump(sample(), path)
    loaded = load(path, mmap_mode=mode)
    check(loaded)
    big = loaded["big"]
    if mode == "r":
        with pytest.raises(ValueError, match="read-only"):
            big[0, 0] = 1.0
        return
    big[0, 0] = -1.0
    del big, loaded
    again = load(path)["big"][0, 0]
    assert again == (-1.0 if mode == "r+" else 0.0)


def test_mmap_of_a_compressed_dump_warns_and_reads(tmp_path):
    path = tmp_path / "data.fj"
    dump(sample(), path, compress=3)
    with pytest.warns(UserWarning, match="compressed"):
        check(load(path, mmap_mode="r"))


def test_mapped_arrays_outlive_the_file(tmp_path):
    path = tmp_path / "data.fj"
    dump(np.arange(1000.0), path)
    mapped = load(path, mmap_mode="r")
    os.remove(path)
    assert mapped.sum() == sum(range(1000))


def test_writes_are_atomic(tmp_path):
    path = tmp_path / "data.fj"
    dump([1, 2, 3], path)
    with pytest.raises((pickle.PicklingError, AttributeError)):
        dump([lambda: 0], path)
    assert load(path) == [1, 2, 3]  # the failed dump left the old file alone
    assert sorted(os.listdir(tmp_path)) == ["data.fj"]


@pytest.mark.parametrize("compress", [0, 3])
def test_truncated_file(tmp_path, compress):
    path = tmp_path / "data.fj"
    # Random floats: a compressed dump of them is still mostly the array's section.
    dump(np.random.default_rng(0).random(2_000_000), path, compress=compress)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DamagedFileError) as info:
        load(path)
    assert str(path) in str(info.value)
    assert "truncated: section 1" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_corrupted_block_is_named(tmp_path):
    path = tmp_path / "data.fj"
    dump(np.random.default_rng(0).random(2_000_000), path, compress=3)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedFileError, match=r"section 1, block \d+ is damaged \(checksum mismatch\)"):
        load(path)


def test_corrupted_header(tmp_path):
    path = tmp_path / "data.fj"
    dump({"a": 1}, path)
    data = bytearray(path.read_bytes())
    data[20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedFileError, match="header is damaged"):
        load(path)


def test_not_a_dump(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(NotADumpFileError, match="not a ferrojob dump"):
        load(path)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.fj")


def test_joblib_files_are_read_with_joblib(tmp_path):
    joblib = pytest.importorskip("joblib")
    for compress in (0, 3):
        path = tmp_path / f"joblib-{compress}.pkl"
        joblib.dump({"a": np.arange(5)}, path, compress=compress)
        np.testing.assert_array_equal(load(path)["a"], np.arange(5))
        with pytest.raises(NotADumpFileError, match=r"written by joblib\.dump"):
            load(path, allow_pickle=False)


def test_allow_pickle_false_accepts_arrays_and_containers_only(tmp_path):
    path = tmp_path / "data.fj"
    dump({"a": np.arange(3.0), "b": [1, (2, 3)], "c": {4}, "z": 1j}, path)
    loaded = load(path, allow_pickle=False)
    np.testing.assert_array_equal(loaded["a"], np.arange(3.0))
    assert loaded["b"] == [1, (2, 3)] and loaded["c"] == {4} and loaded["z"] == 1j
    dump({"when": __import__("datetime").date(2026, 1, 1)}, path)
    with pytest.raises(pickle.UnpicklingError, match=r"refuses datetime\.date"):
        load(path, allow_pickle=False)


def test_invalid_arguments(tmp_path):
    with pytest.raises(TypeError, match="expects a file name"):
        dump(1, 42)
    with pytest.raises(InvalidParameterError, match="is not a mapping mode"):
        load(tmp_path / "x.fj", mmap_mode="rw")


def test_nothing_is_left_open(tmp_path):
    before = len(os.listdir("/proc/self/fd"))
    for i in range(50):
        path = tmp_path / f"{i}.fj"
        dump(np.arange(10_000.0), path, compress=i % 2)
        load(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load(path, mmap_mode="r")
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("mode", ["r", "r+", "c", "w+"])
def test_mapped_arrays_are_numpy_memmaps_that_say_where_they_lie(tmp_path, mode):
    path = tmp_path / "data.pkl"
    dump({"big": np.arange(100_000.0), "small": [1, 2]}, path)
    big = load(path, mmap_mode=mode)["big"]
    assert isinstance(big, np.memmap)
    assert big.filename == str(path) and big.mode == ("r+" if mode == "w+" else mode)
    with open(path, "rb") as raw:
        raw.seek(big.offset)
        assert np.frombuffer(raw.read(80), dtype=np.float64).tolist() == list(range(10))
    assert float(big.sum()) == float(np.arange(100_000.0).sum())  # "w+" never truncates


def test_dump_and_load_with_file_objects_and_bytes_io(tmp_path):
    import io

    value = {"array": np.arange(1000), "text": "hello"}
    memory = io.BytesIO()
    assert dump(value, memory) is None  # as joblib: nothing returned for a file object
    memory.seek(0)
    loaded = load(memory)
    assert loaded["text"] == "hello" and loaded["array"].tolist() == list(range(1000))
    with open(tmp_path / "data.pkl.gz", "wb") as handle:  # the name's suffix picks gzip
        dump(value, handle)
    with open(tmp_path / "data.pkl.gz", "rb") as handle:
        assert load(handle)["text"] == "hello"
    assert load(tmp_path / "data.pkl.gz")["array"].sum() == value["array"].sum()


JOBLIB_FILES = [
    ("plain.pkl", 0),
    ("zlib.pkl", 3),
    ("gzip.pkl.gz", 0),
    ("bz2.pkl.bz2", 0),
    ("xz.pkl.xz", 0),
    ("lzma.pkl.lzma", 0),
]


def test_joblib_files_are_read_natively_without_joblib(tmp_path, script):
    joblib = pytest.importorskip("joblib")
    value = {
        "floats": np.arange(100_000.0),
        "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        "big_endian": np.arange(5, dtype=">i8"),
        "objects": np.array([{"a": 1}, None], dtype=object),
        "scalar": np.float32(2.5),
        "text": "hello",
    }
    for name, compress in JOBLIB_FILES:
        joblib.dump(value, tmp_path / name, compress=compress)
    done = script(
        f"""
        import sys
        sys.modules["joblib"] = None  # as if joblib were not installed
        import numpy as np
        import ferrojob
        for name, _ in {JOBLIB_FILES!r}:
            loaded = ferrojob.load({str(tmp_path)!r} + "/" + name)
            assert loaded["text"] == "hello" and loaded["floats"].sum() == np.arange(100_000.0).sum()
            assert np.array_equal(loaded["fortran"], np.arange(12.0).reshape(3, 4)) and loaded["fortran"].flags.f_contiguous
            assert loaded["big_endian"].dtype.isnative and loaded["big_endian"].tolist() == [0, 1, 2, 3, 4]
            assert loaded["objects"][0] == {{"a": 1}} and loaded["scalar"] == np.float32(2.5)
        mapped = ferrojob.load({str(tmp_path)!r} + "/plain.pkl", mmap_mode="r")
        assert isinstance(mapped["floats"], np.memmap) and mapped["floats"].mode == "r"
        assert not mapped["big_endian"].dtype.isnative  # mapped: the file's own byte order
        print("read", len({JOBLIB_FILES!r}), "joblib files without joblib")
        """
    )
    assert done.returncode == 0, done.stderr
    assert "without joblib" in done.stdout


def test_big_endian_arrays_come_back_native_unless_mapped(tmp_path):
    path = tmp_path / "be.pkl"
    dump({"be": np.arange(5, dtype=">i8")}, path)
    loaded = load(path)["be"]
    assert loaded.dtype.isnative and loaded.tolist() == [0, 1, 2, 3, 4]
    assert not load(path, mmap_mode="r")["be"].dtype.isnative  # the file's own order
    assert not load(path, ensure_native_byte_order=False)["be"].dtype.isnative
    with pytest.raises(ValueError, match="Native byte ordering can only be enforced"):
        load(path, mmap_mode="r+", ensure_native_byte_order=True)


def test_several_dumps_in_one_stream_are_read_one_by_one(tmp_path):
    joblib = pytest.importorskip("joblib")
    values = [np.arange(100_000.0), "text", {"nested": np.arange(7)}, np.arange(3)]
    path = tmp_path / "stream.bin"
    ends = []
    with open(path, "wb") as handle:
        dump(values[0], handle)
        ends.append(handle.tell())
        dump(values[1], handle, compress=("zstd", 3))
        ends.append(handle.tell())
        joblib.dump(values[2], handle)  # joblib's format, uncompressed: a pickle ends by itself
        ends.append(handle.tell())
        dump(values[3], handle, compress=("gzip", 1))
        ends.append(handle.tell())
    with open(path, "rb") as handle:
        for value, end in zip(values, ends, strict=True):
            loaded = load(handle)
            assert handle.tell() == end  # not one byte further
            if isinstance(value, dict):
                np.testing.assert_array_equal(loaded["nested"], value["nested"])
            elif isinstance(value, np.ndarray):
                np.testing.assert_array_equal(loaded, value)
            else:
                assert loaded == value
        with pytest.raises(NotADumpFileError, match="at its end"):
            load(handle)


def test_a_dump_is_read_from_a_socket_that_stays_open():
    import socket
    import threading

    left, right = socket.socketpair()
    with left, right, left.makefile("wb") as writer, right.makefile("rb") as reader:

        def send() -> None:  # more than a socket buffer holds: written while it is read
            for value in (np.arange(50_000), "after it"):
                dump(value, writer)
            writer.flush()

        sender = threading.Thread(target=send)
        sender.start()
        # The writer keeps the socket open: reading to the end would wait forever.
        np.testing.assert_array_equal(load(reader), np.arange(50_000))
        assert load(reader) == "after it"
        sender.join()


@pytest.mark.parametrize("opener", ["gzip", "bz2", "lzma"])
def test_a_stream_compressed_as_a_whole_is_read_through_or_from_its_raw_bytes(tmp_path, opener):
    module = __import__(opener)
    path = tmp_path / "whole.bin"
    with module.open(path, "wb") as compressed:
        dump({"a": np.arange(1000)}, compressed)
    with module.open(path, "rb") as compressed:
        assert load(compressed)["a"].sum() == np.arange(1000).sum()
    with open(path, "rb") as raw:  # the codec is told by its magic bytes
        assert load(raw)["a"].sum() == np.arange(1000).sum()


def test_a_bytes_io_left_at_its_end_by_dump_is_read_from_its_start():
    import io

    memory = io.BytesIO()
    dump([1, 2], memory)
    assert load(memory) == [1, 2]  # as in joblib: dump, then load, without seeking
    memory = io.BytesIO(b"header")
    memory.seek(6)
    dump("after a header", memory)
    memory.seek(6)
    assert load(memory) == "after a header"  # otherwise from where the stream is


def test_broken_streams_are_reported_not_hung_on(tmp_path):
    import io

    whole = io.BytesIO()
    dump(np.arange(10_000), whole)
    data = whole.getvalue()
    for cut in (10, 40, len(data) - 100):
        with pytest.raises(DamagedFileError, match=r"truncated: (the stream ends|its dump is)"):
            load(io.BytesIO(data[:cut]))
    with pytest.raises(NotADumpFileError, match="looks like a zstd frame"):
        load(io.BytesIO(b"\x28\xb5\x2f\xfd" + bytes(40)))
    with pytest.raises(NotADumpFileError, match="at its end"):
        load(io.BytesIO())
    import gzip

    for damaged in (b"\x78\x9c" + bytes(range(40)), gzip.compress(data)[:-30], b"\x1f\x8b" + bytes(30)):
        with pytest.raises(DamagedFileError, match="compression is damaged or cut short"):
            load(io.BytesIO(damaged))

    class Endless(io.RawIOBase):
        """A hostile stream: a header claiming 1 TiB of header, then zeros forever."""

        def __init__(self) -> None:
            self.served = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer):
            start = b"FJDUMP\x00\x01" + (1 << 40).to_bytes(8, "little")
            view = memoryview(buffer).cast("B")
            chunk = (start if self.served == 0 else bytes(len(view)))[: len(view)]
            view[: len(chunk)] = chunk
            self.served += len(chunk)
            return len(chunk)

    endless = Endless()
    with pytest.raises(DamagedFileError, match="implausible length"):
        load(endless)
    assert endless.served == 16  # refused from the preamble, before reading any of it


def test_joblib_files_from_before_0_10_are_read_with_joblibs_warning():
    joblib = pytest.importorskip("joblib")
    data = os.path.join(os.path.dirname(joblib.__file__), "test", "data")
    expected = [np.arange(5), np.arange(5.0), np.array([1, "abc", {"a": 1, "b": 2}], dtype="O")]
    names = [
        "joblib_0.9.2_pickle_py34_np19.pkl",
        "joblib_0.9.2_compressed_pickle_py34_np19.gz",
        "joblib_0.9.4.dev0_compressed_cache_size_pickle_py35_np19.gz",
    ]
    for name in names:
        path = os.path.join(data, name)
        if not os.path.exists(path):
            pytest.skip("joblib's test data is not installed")
        with pytest.warns(DeprecationWarning, match="less than 0.10") as caught:
            loaded = load(path)
        assert caught[0].filename == __file__  # it points at the caller of load
        for got, want in zip(loaded, expected, strict=False):
            np.testing.assert_array_equal(got, want)
        assert isinstance(loaded[4], np.matrix) and loaded[5] == "C'est l'\xe9t\xe9 !"
    with pytest.warns(DeprecationWarning):
        mapped = load(os.path.join(data, names[0]), mmap_mode="r")
    assert isinstance(mapped[0], np.memmap)  # its array files are mapped
    with pytest.raises(NotADumpFileError, match="generated with python 2"):
        load(os.path.join(data, "joblib_0.9.2_pickle_py27_np17.pkl"))
    with open(os.path.join(data, names[0]), "rb") as stream:
        with pytest.raises(NotADumpFileError, match="load it by its path"):
            load(stream)
    with open(os.path.join(data, names[1]), "rb") as stream:  # a Z-file, its arrays inside it
        with pytest.warns(DeprecationWarning, match="less than 0.10"):
            from_stream = load(stream)
        np.testing.assert_array_equal(from_stream[1], expected[1])
    # joblib >= 0.10 files (protocol 3: text opcodes, read by line) load alike from streams.
    import io

    newer = [name for name in os.listdir(data) if name.startswith("joblib_0.1") and "_py3" in name]
    assert newer
    for name in newer:
        path = os.path.join(data, name)
        with open(path, "rb") as raw:
            from_stream = load(io.BytesIO(raw.read()))
        for got, want in zip(from_stream, load(path), strict=True):
            assert type(got) is type(want)
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("mmap_mode", [None, "r"])
def test_load_leaves_no_reference_cycle_holding_its_arrays(tmp_path, mmap_mode):
    import gc

    path = tmp_path / "big.fj"
    dump({"a": np.arange(300_000.0), "b": np.arange(5, dtype=">i8")}, path)
    gc.collect()
    gc.disable()
    try:
        loaded = load(path, mmap_mode=mmap_mode)
        del loaded
        # Freed by reference counting alone: a cycle would keep the arrays' memory until a
        # collection runs, and the next load would need as much again.
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_a_plain_file_object_at_its_start_is_memory_mapped_by_its_name(tmp_path):
    import io

    path = tmp_path / "two.bin"
    with open(path, "wb") as handle:
        dump(np.arange(100_000.0), handle)
        dump("second", handle)
    with open(path, "rb") as handle:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # mapped, as asked: nothing to warn about
            first = load(handle, mmap_mode="r")
        assert isinstance(first, np.memmap) and first.filename == str(path) and first[-1] == 99_999.0
        assert load(handle) == "second"  # the stream was moved past the mapped dump
        handle.seek(0)
        in_memory = io.BytesIO(handle.read())
    with pytest.warns(UserWarning, match="other than a plain file at its start"):
        assert load(in_memory, mmap_mode="r")[-1] == 99_999.0  # read, not mapped


@pytest.mark.parametrize("opener", ["gzip", "bz2"])
def test_a_dump_compressed_as_a_whole_loads_by_its_name(tmp_path, opener):
    path = tmp_path / "whole.bin"
    with __import__(opener).open(path, "wb") as compressed:
        dump({"a": np.arange(10)}, compressed)
    assert load(path)["a"].tolist() == list(range(10))
    with pytest.warns(UserWarning, match="is compressed"):
        assert load(path, mmap_mode="r")["a"].sum() == 45


def test_damage_in_a_streamed_dump_names_the_stream(tmp_path):
    path = tmp_path / "damaged.fj"
    dump(np.random.default_rng(0).random(50_000), path, compress=3)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # inside the last compressed block
    path.write_bytes(bytes(data))
    with (
        open(path, "rb") as handle,
        pytest.raises(DamagedFileError, match=r"damaged\.fj: section 1, block 0 is damaged"),
    ):
        load(handle)


class _ReadsText:
    """A file-like object whose read() gives str (a wrapper written for text)."""

    def read(self, size=-1):
        return "FJDUMP"[: size if size >= 0 else None]


def test_a_text_mode_file_is_refused_saying_a_binary_one_is_needed(tmp_path):
    import io

    path = tmp_path / "x.fj"
    dump([1, 2], path)
    with open(path) as text, pytest.raises(TypeError, match="load needs a binary file object") as raised:
        load(text)
    assert "open(path, 'rb')" in str(raised.value)
    with pytest.raises(TypeError, match="load needs a binary file object"):
        load(io.StringIO("abc"))
    with pytest.raises(TypeError, match="load needs a binary file object"):
        load(_ReadsText())
    with pytest.raises(TypeError, match="dump needs a binary file object") as raised:
        dump([1], io.StringIO())
    assert "open(path, 'wb')" in str(raised.value)


def test_a_file_that_is_no_dump_is_told_by_what_it_looks_like(tmp_path):
    import gzip

    from ferrojob import NotADumpFileError

    np.save(tmp_path / "a.npy", np.arange(3))
    (tmp_path / "notes.txt").write_text("just some notes\n")
    (tmp_path / "notes.gz").write_bytes(gzip.compress(b"just some notes\n"))
    expected = {
        "a.npy": "it looks like a NumPy .npy file: read it with numpy.load",
        "notes.txt": "it looks like text (a dump is binary)",
        "notes.gz": "a gzip file, but what it holds is not a ferrojob dump (it looks like text",
    }
    for name, said in expected.items():
        with pytest.raises(NotADumpFileError) as raised:
            load(tmp_path / name)
        assert said in str(raised.value), str(raised.value)
        assert raised.value.code == "FJ402"


WHOLE_STREAM_CODECS = ["gzip", "zlib", "bz2", "xz", "lzma"]


def compress_whole(codec, data):
    import bz2
    import gzip
    import lzma
    import zlib

    return {
        "gzip": gzip.compress,
        "zlib": zlib.compress,
        "bz2": bz2.compress,
        "xz": lzma.compress,
        "lzma": lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE),
    }[codec](data)


@pytest.mark.parametrize("codec", WHOLE_STREAM_CODECS)
def test_dumps_compressed_as_a_whole_one_after_another_load_in_order(codec):
    import io

    joblib = pytest.importorskip("joblib")
    stream = io.BytesIO()
    values = [[1], {"two": 2}, np.arange(3.0)]
    for value in values:
        plain = io.BytesIO()
        dump(value, plain)
        stream.write(compress_whole(codec, plain.getvalue()))
    for value in [{"joblib": 1}, {"joblib": 2}]:
        plain = io.BytesIO()
        joblib.dump(value, plain)
        stream.write(compress_whole(codec, plain.getvalue()))
    stream.seek(0)
    loaded = [load(stream) for _ in range(5)]
    assert loaded[:2] == values[:2] and loaded[3:] == [{"joblib": 1}, {"joblib": 2}]
    assert np.array_equal(loaded[2], values[2])
    assert stream.tell() == len(stream.getvalue())  # each load stopped right after its own dump


class _Unseekable:
    """A binary reader that cannot seek (a pipe, a socket's file)."""

    def __init__(self, data):
        import io

        self._data = io.BytesIO(data)

    def read(self, size=-1):
        return self._data.read(size)

    def seekable(self):
        return False


@pytest.mark.parametrize("codec", WHOLE_STREAM_CODECS)
def test_bytes_an_unseekable_stream_cannot_get_back_are_warned_about(codec):
    import io

    plain = io.BytesIO()
    dump([1, 2], plain)
    one = compress_whole(codec, plain.getvalue())
    stream = _Unseekable(one + one)
    with pytest.warns(UserWarning, match=r"bytes after this dump were read with it and cannot be put back"):
        assert load(stream) == [1, 2]
    # Alone in its stream, nothing is lost and nothing is said.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load(_Unseekable(one)) == [1, 2]


class _WatchesStaging:
    """A binary writer that notes, at each write, the ferrojob folders in /dev/shm and in the
    temporary directory (where a dump into a file object is staged)."""

    def __init__(self, temporary):
        self.temporary = temporary
        self.seen = {"/dev/shm": set(), "temporary": set()}
        self.chunks = []

    def _ferrojob_folders(self, folder):
        try:
            return {name for name in os.listdir(folder) if name.startswith("ferrojob-")}
        except OSError:
            return set()

    def write(self, data):
        self.seen["/dev/shm"] |= self._ferrojob_folders("/dev/shm")
        self.seen["temporary"] |= self._ferrojob_folders(self.temporary)
        self.chunks.append(bytes(data))
        return len(data)


def test_streams_are_staged_in_the_callers_temporary_directory_not_dev_shm(tmp_path, monkeypatch):
    import io
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    array = np.arange(1_000_000.0)
    writer = _WatchesStaging(str(tmp_path))
    dump(array, writer)
    assert writer.seen["temporary"] and not writer.seen["/dev/shm"]
    np.testing.assert_array_equal(load(io.BytesIO(b"".join(writer.chunks))), array)
    assert not os.listdir(tmp_path), "the staging folder is removed"


STAGING_UNDER_A_FILE_SIZE_CAP = """
import io, resource, sys
import numpy as np
from ferrojob import dump, load

resource.setrlimit(resource.RLIMIT_FSIZE, (8 << 20, resource.RLIM_INFINITY))
try:
    dump(np.ones(12 << 20, dtype=np.uint8), io.BytesIO())
except OSError as error:
    print(type(error).__name__, error.errno)
    print(error)
"""


def test_a_stream_that_cannot_be_staged_says_where_and_what_to_do(tmp_path):
    import errno
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", STAGING_UNDER_A_FILE_SIZE_CAP],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    first, message = done.stdout.split("\n", 1)
    assert first == f"OSError {errno.EFBIG}"
    assert f"staged in {tmp_path}" in message and "set TMPDIR" in message


def test_a_seekable_stream_shorter_than_its_dump_is_refused_before_it_is_copied(tmp_path):
    import io

    whole = io.BytesIO()
    dump(np.arange(1_000_000.0), whole)
    cut = io.BytesIO(whole.getvalue()[:4096])
    with pytest.raises(DamagedFileError, match=r"truncated: its dump is \d+ bytes long, the stream holds 4096"):
        load(cut)
    assert cut.tell() == 0, "nothing was read past the check"


def _joblib_format_value():
    return {
        "c": np.arange(12.0).reshape(3, 4),
        "f": np.asfortranarray(np.arange(12).reshape(3, 4)),
        "objects": np.array([1, "a", None], dtype=object),
        "scalar": np.float32(3.5),
        "zero_d": np.array(7),
        "empty": np.zeros((0, 3)),
        "strided": np.arange(20)[::3],
        "text": np.array(["ab", "c"]),
        "nested": [np.ones(2), "x", {"n": np.arange(3)}],
    }


def _same_as_joblib_format_value(loaded):
    value = _joblib_format_value()
    assert loaded.keys() == value.keys()
    for key in ("c", "f", "zero_d", "empty", "strided", "text"):
        np.testing.assert_array_equal(loaded[key], value[key])
        assert loaded[key].dtype == value[key].dtype
    assert loaded["f"].flags.f_contiguous and not loaded["f"].flags.c_contiguous
    assert list(loaded["objects"]) == [1, "a", None] and loaded["scalar"] == np.float32(3.5)
    np.testing.assert_array_equal(loaded["nested"][2]["n"], np.arange(3))


@pytest.mark.parametrize(
    "compress, name, magic",
    [
        (0, "plain.joblib", b"\x80"),
        (3, "zlib.joblib", b"x"),
        (True, "default.joblib", b"x"),
        (("gzip", 3), "gzip.joblib", b"\x1f\x8b"),
        (("bz2", 1), "bz2.joblib", b"BZh"),
        (("xz", 1), "xz.joblib", b"\xfd7zXZ"),
        (("lzma", 1), "lzma.joblib", b"]\x00"),
        (0, "suffix.pkl.gz", b"\x1f\x8b"),
    ],
)
def test_dump_in_joblib_format_is_read_by_joblib(tmp_path, compress, name, magic):
    joblib = pytest.importorskip("joblib")
    path = tmp_path / name
    assert dump(_joblib_format_value(), path, compress=compress, format="joblib") == [str(path)]
    assert path.read_bytes().startswith(magic)  # joblib's own codec choice, as joblib.dump makes it
    _same_as_joblib_format_value(joblib.load(path))
    _same_as_joblib_format_value(load(path))


def test_an_uncompressed_joblib_format_dump_maps_aligned_arrays_in_joblib(tmp_path):
    joblib = pytest.importorskip("joblib")
    path = tmp_path / "mapped.joblib"
    dump({"a": np.arange(1000.0), "b": np.arange(7, dtype=np.int8), "c": np.arange(9.0)}, path, format="joblib")
    mapped = joblib.load(path, mmap_mode="r")
    for key in ("a", "b", "c"):
        assert isinstance(mapped[key], np.memmap)
        assert mapped[key].ctypes.data % 16 == 0  # joblib's alignment
    np.testing.assert_array_equal(mapped["c"], np.arange(9.0))


def test_joblib_format_into_a_file_object_and_by_environment_default(tmp_path, monkeypatch):
    import io

    joblib = pytest.importorskip("joblib")
    buffer = io.BytesIO()
    assert dump({"a": np.arange(5)}, buffer, format="joblib") is None
    buffer.seek(0)
    np.testing.assert_array_equal(joblib.load(buffer)["a"], np.arange(5))
    monkeypatch.setenv("FERROJOB_DUMP_FORMAT", "joblib")
    dump([1, np.arange(3)], tmp_path / "by_env.pkl")
    assert joblib.load(tmp_path / "by_env.pkl")[0] == 1
    monkeypatch.setenv("FERROJOB_DUMP_FORMAT", "pickle")
    with pytest.raises(InvalidParameterError, match="FERROJOB_DUMP_FORMAT='pickle' is not a dump format"):
        dump([1], tmp_path / "x.pkl")


def test_joblib_format_refuses_what_joblib_refuses(tmp_path):
    with pytest.raises(InvalidParameterError, match="format='npy' is not a dump format"):
        dump([1], tmp_path / "x", format="npy")
    with pytest.raises(InvalidParameterError, match="compression joblib's format has"):
        dump([1], tmp_path / "x", compress=("zstd", 3), format="joblib")
    with pytest.raises(InvalidParameterError, match="a level goes from 0 to 9"):
        dump([1], tmp_path / "x", compress=12, format="joblib")
    assert not list(tmp_path.iterdir())  # nothing half-written


WHOLE_FILE_ENDINGS = [".gz", ".z", ".bz2", ".xz", ".lzma"]


def _decompress_whole(ending, data):
    import bz2
    import gzip
    import lzma
    import zlib

    return {".gz": gzip.decompress, ".z": zlib.decompress, ".bz2": bz2.decompress}.get(ending, lzma.decompress)(data)


@pytest.mark.parametrize("ending", WHOLE_FILE_ENDINGS)
def test_a_name_ending_in_a_codec_is_a_real_stream_of_it(tmp_path, ending):
    # 12 MB: more than one member for gzip, bz2 and xz (cut on every core); the container inside.
    value = {"a": np.arange(1_500_000, dtype=np.float64), "s": "text"}
    path = tmp_path / f"data.pkl{ending}"
    dump(value, path, compress=1)
    inside = _decompress_whole(ending, path.read_bytes())  # every tool of the codec reads it
    assert inside.startswith(b"FJDUMP")
    loaded = load(path)
    np.testing.assert_array_equal(loaded["a"], value["a"])
    # Decompressed by an outside tool, the file inside is a plain dump.
    (tmp_path / "inside.fj").write_bytes(inside)
    np.testing.assert_array_equal(load(tmp_path / "inside.fj")["a"], value["a"])


@pytest.mark.parametrize("ending", [".gz", ".bz2", ".xz"])
def test_dumps_of_several_members_one_after_another_load_in_order(tmp_path, ending):
    import io

    path = tmp_path / f"one.pkl{ending}"
    dump(np.arange(1_500_000.0), path, compress=1)  # several members each
    stream = io.BytesIO(path.read_bytes() * 2 + b"after")
    first, second = load(stream), load(stream)
    np.testing.assert_array_equal(second, np.arange(1_500_000.0))
    np.testing.assert_array_equal(first, second)
    assert stream.read() == b"after"  # each load stopped right after its own members


def test_gunzip_reads_a_gz_dump(tmp_path):
    import shutil
    import subprocess

    if shutil.which("gzip") is None:
        pytest.skip("no gzip tool here")
    path = tmp_path / "data.pkl.gz"
    dump({"x": np.arange(10)}, path)
    unpacked = subprocess.run(["gzip", "-dc", str(path)], capture_output=True, check=True).stdout
    assert unpacked.startswith(b"FJDUMP")


def test_parallel_config_sets_the_dump_format_of_its_block(tmp_path):
    from ferrojob import parallel_config

    joblib = pytest.importorskip("joblib")
    with parallel_config(dump_format="joblib"):
        dump({"a": np.arange(3)}, tmp_path / "in_block.pkl")
    dump({"a": np.arange(3)}, tmp_path / "after.pkl")
    np.testing.assert_array_equal(joblib.load(tmp_path / "in_block.pkl")["a"], np.arange(3))
    assert (tmp_path / "after.pkl").read_bytes().startswith(b"FJDUMP")
    with pytest.raises(InvalidParameterError, match="dump_format='pickle' is not a dump format"):
        parallel_config(dump_format="pickle")


@pytest.mark.parametrize("compress", [3, ("zstd", 9)])
def test_decimal_floats_round_trip_bit_for_bit_and_compress_well(tmp_path, compress):
    # Prices, measurements, anything rounded to a few decimals: stored as the integer steps
    # between values. Every other value (NaN with a payload, -0.0, inf, more digits) comes
    # back with its exact bits.
    rng = np.random.default_rng(1)
    prices = np.round(100 + np.cumsum(rng.standard_normal(1_000_000)), 2)
    prices[[5, 50, 500, 5000]] = [np.nan, -0.0, np.inf, 0.1 + 0.2]
    prices[7] = np.frombuffer(np.uint64(0x7FF8_0000_DEAD_BEEF).tobytes(), dtype=np.float64)[0]
    path = tmp_path / "prices.fj"
    dump(prices, path, compress=compress)
    loaded = load(path)
    assert loaded.tobytes() == prices.tobytes()
    assert path.stat().st_size < prices.nbytes / 5
