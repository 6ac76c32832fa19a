"""TFRecord files and ``tf.train.Example`` protos, read without TensorFlow.

A TFRecord file is a sequence of records, each framed as::

    uint64 length (little endian) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)

with ``masked_crc(x) = rotate_right(crc32c(x), 15) + 0xa282ead8`` (mod 2**32). Both checksums are verified, so a
truncated or corrupt file raises :class:`TFRecordError` naming the file and the record index instead of yielding
garbage. Compressed (GZIP / ZLIB) TFRecord files are not supported; TFDS writes them uncompressed.

Records written by TFDS hold serialized ``tf.train.Example`` protos. Their schema
(``tensorflow/core/example/feature.proto`` and ``example.proto``) is declared here at run time through
``descriptor_pb2`` with the same package, message names and field numbers, in a private descriptor pool so that
it never clashes with TensorFlow's own copy when both are imported. Parsing needs only the ``protobuf`` package.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")  # length, masked crc of the length bytes
_FOOTER = struct.Struct("<I")  # masked crc of the data

# A feature's values: ``list[bytes]`` for a bytes_list, float32 / int64 arrays for float_list / int64_list.
FeatureValue = list[bytes] | np.ndarray


class TFRecordError(RuntimeError):
    """A TFRecord file is truncated or corrupt, or a record is not the expected proto."""

    def __init__(self, path: str | Path, index: int, problem: str) -> None:
        self.path, self.index, self.problem = str(path), index, problem
        super().__init__(f"{path}: record {index}: {problem}")


def masked_crc(data: bytes) -> int:
    """The masked CRC-32C that TFRecord stores after the length and after the data."""
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def read_records(path: str | Path, *, verify: bool = True) -> Iterator[bytes]:
    """Yield the payload of every record in ``path``, in file order, checking both CRCs unless ``verify=False``."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        index = 0
        while True:
            header = f.read(_HEADER.size)
            if not header:
                return
            if len(header) < _HEADER.size:
                raise TFRecordError(path, index, f"truncated header: expected {_HEADER.size} bytes, "
                                                 f"the file ends after {len(header)}")
            length, length_crc = _HEADER.unpack(header)
            if verify and masked_crc(header[:8]) != length_crc:
                raise TFRecordError(path, index, f"length checksum mismatch (stored {length_crc:#010x}, "
                                                 f"computed {masked_crc(header[:8]):#010x}): corrupt file")
            left = size - f.tell()
            if length > left:  # checked before reading: a corrupt length must not allocate terabytes
                raise TFRecordError(path, index, f"truncated data: expected {length} bytes, the file has {left} left")
            data = f.read(length)
            if len(data) < length:
                raise TFRecordError(path, index, f"truncated data: expected {length} bytes, "
                                                 f"the file ends after {len(data)}")
            footer = f.read(_FOOTER.size)
            if len(footer) < _FOOTER.size:
                raise TFRecordError(path, index, f"truncated data checksum: expected {_FOOTER.size} bytes, "
                                                 f"the file ends after {len(footer)}")
            if verify:
                (data_crc,) = _FOOTER.unpack(footer)
                if masked_crc(data) != data_crc:
                    raise TFRecordError(path, index, f"data checksum mismatch (stored {data_crc:#010x}, "
                                                     f"computed {masked_crc(data):#010x}): corrupt file")
            yield data
            index += 1


def count_records(path: str | Path) -> int:
    """Number of records in ``path``, reading only the headers (no checksums of the data)."""
    path = Path(path)
    size = path.stat().st_size
    n, pos = 0, 0
    with path.open("rb") as f:
        while pos < size:
            header = f.read(_HEADER.size)
            if len(header) < _HEADER.size:
                raise TFRecordError(path, n, "truncated header")
            (length, _) = _HEADER.unpack(header)
            pos += _HEADER.size + length + _FOOTER.size
            if pos > size:
                raise TFRecordError(path, n, f"truncated data: record needs {length} bytes past the header")
            f.seek(pos)
            n += 1
    return n


# ----------------------------------------------------------------------------------------- tf.train.Example schema
def _field(msg: descriptor_pb2.DescriptorProto, name: str, number: int, kind: int, label: int,
           type_name: str = "", oneof: int | None = None, packed: bool = False) -> None:
    f = msg.field.add(name=name, number=number, type=kind, label=label)
    if type_name:
        f.type_name = type_name
    if oneof is not None:
        f.oneof_index = oneof
    if packed:
        f.options.packed = True


def _map_field(msg: descriptor_pb2.DescriptorProto, name: str, number: int, entry: str, value_type: str) -> None:
    """``map<string, value_type> name = number;`` spelled out as protoc does: a nested ``<Entry>`` message."""
    fd = descriptor_pb2.FieldDescriptorProto
    e = msg.nested_type.add(name=entry)
    e.options.map_entry = True
    _field(e, "key", 1, fd.TYPE_STRING, fd.LABEL_OPTIONAL)
    _field(e, "value", 2, fd.TYPE_MESSAGE, fd.LABEL_OPTIONAL, value_type)
    _field(msg, name, number, fd.TYPE_MESSAGE, fd.LABEL_REPEATED, f"{msg.name}.{entry}")


@cache
def _classes() -> dict[str, type[Message]]:
    """Message classes for the ``tensorflow`` Example protos, field numbers as in feature.proto / example.proto."""
    fd = descriptor_pb2.FieldDescriptorProto
    opt, rep = fd.LABEL_OPTIONAL, fd.LABEL_REPEATED
    file = descriptor_pb2.FileDescriptorProto(name="vlaforge/tensorflow_example.proto", package="tensorflow",
                                              syntax="proto3")
    _field(file.message_type.add(name="BytesList"), "value", 1, fd.TYPE_BYTES, rep)
    _field(file.message_type.add(name="FloatList"), "value", 1, fd.TYPE_FLOAT, rep, packed=True)
    _field(file.message_type.add(name="Int64List"), "value", 1, fd.TYPE_INT64, rep, packed=True)
    feature = file.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    _field(feature, "bytes_list", 1, fd.TYPE_MESSAGE, opt, ".tensorflow.BytesList", oneof=0)
    _field(feature, "float_list", 2, fd.TYPE_MESSAGE, opt, ".tensorflow.FloatList", oneof=0)
    _field(feature, "int64_list", 3, fd.TYPE_MESSAGE, opt, ".tensorflow.Int64List", oneof=0)
    _map_field(file.message_type.add(name="Features"), "feature", 1, "FeatureEntry", ".tensorflow.Feature")
    _field(file.message_type.add(name="FeatureList"), "feature", 1, fd.TYPE_MESSAGE, rep, ".tensorflow.Feature")
    _map_field(file.message_type.add(name="FeatureLists"), "feature_list", 1, "FeatureListEntry",
               ".tensorflow.FeatureList")
    _field(file.message_type.add(name="Example"), "features", 1, fd.TYPE_MESSAGE, opt, ".tensorflow.Features")
    seq = file.message_type.add(name="SequenceExample")
    _field(seq, "context", 1, fd.TYPE_MESSAGE, opt, ".tensorflow.Features")
    _field(seq, "feature_lists", 2, fd.TYPE_MESSAGE, opt, ".tensorflow.FeatureLists")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.{name}"))
            for name in ("Feature", "Features", "Example", "SequenceExample")}


def example_class(name: str = "Example") -> type[Message]:
    """The runtime-built message class ``tensorflow.<name>`` (Feature, Features, Example, SequenceExample)."""
    return _classes()[name]


def _feature_value(feature: Any) -> FeatureValue:
    kind = feature.WhichOneof("kind")
    if kind == "bytes_list":
        return list(feature.bytes_list.value)
    if kind == "int64_list":
        return np.asarray(feature.int64_list.value, dtype=np.int64)
    if kind == "float_list":
        return np.asarray(feature.float_list.value, dtype=np.float32)
    return np.zeros(0, np.float32)  # a Feature with no list set is an empty list


def _features(features: Any) -> dict[str, FeatureValue]:
    return {k: _feature_value(v) for k, v in features.feature.items()}


def parse_example(data: bytes) -> dict[str, FeatureValue]:
    """A serialized ``tf.train.Example`` -> ``{feature name: values}`` (raises ``DecodeError`` if malformed)."""
    msg = example_class("Example")()
    msg.ParseFromString(data)
    return _features(msg.features)


def parse_sequence_example(data: bytes) -> tuple[dict[str, FeatureValue], dict[str, list[FeatureValue]]]:
    """A serialized ``tf.train.SequenceExample`` -> (context features, ``{name: per-step values}``)."""
    msg = example_class("SequenceExample")()
    msg.ParseFromString(data)
    lists = {k: [_feature_value(f) for f in v.feature] for k, v in msg.feature_lists.feature_list.items()}
    return _features(msg.context), lists


def read_examples(path: str | Path, *, verify: bool = True) -> Iterator[dict[str, FeatureValue]]:
    """Every record of ``path`` parsed as a ``tf.train.Example``; errors name the file and the record."""
    for i, data in enumerate(read_records(path, verify=verify)):
        try:
            yield parse_example(data)
        except DecodeError as e:
            raise TFRecordError(path, i, f"not a tf.train.Example ({e})") from e
