"""Read named metadata entries from a .tflite file without any schema package.

Just enough of the flatbuffer format: Model.buffers (field 4), Model.metadata (field 6),
Metadata{name, buffer}, Buffer.data (field 0) or Buffer{offset, size} (large models).
"""
from __future__ import annotations

import struct


def _u32(b, o):
    return struct.unpack_from("<I", b, o)[0]


def _field(b, table, index):
    """Absolute offset of field `index` of the table at `table`, or None if absent."""
    vtable = table - struct.unpack_from("<i", b, table)[0]
    vsize = struct.unpack_from("<H", b, vtable)[0]
    if 4 + 2 * index >= vsize:
        return None
    rel = struct.unpack_from("<H", b, vtable + 4 + 2 * index)[0]
    return table + rel if rel else None


def _vector(b, at):
    start = at + _u32(b, at)
    return start + 4, _u32(b, start)


def _table_vector(b, at):
    start, n = _vector(b, at)
    return [start + 4 * i + _u32(b, start + 4 * i) for i in range(n)]


def read_metadata(data: bytes) -> dict[str, bytes]:
    """name → bytes of every metadata entry; raises ValueError on a malformed file."""
    try:
        if data[4:8] != b"TFL3":
            raise ValueError("no TFL3 identifier")
        model = _u32(data, 0)
        out = {}
        meta_at, buf_at = _field(data, model, 6), _field(data, model, 4)
        if meta_at is None or buf_at is None:
            return out
        buffers = _table_vector(data, buf_at)
        for entry in _table_vector(data, meta_at):
            name_at, index_at = _field(data, entry, 0), _field(data, entry, 1)
            if name_at is None or index_at is None:
                continue
            start, n = _vector(data, name_at)
            name = data[start:start + n].decode("utf-8")
            buf = buffers[_u32(data, index_at)]
            data_at = _field(data, buf, 0)
            if data_at is not None:
                start, n = _vector(data, data_at)
                out[name] = bytes(data[start:start + n])
            else:  # >2 GB models keep buffers after the flatbuffer: offset/size fields
                off_at, size_at = _field(data, buf, 1), _field(data, buf, 2)
                if off_at is not None and size_at is not None:
                    off, size = struct.unpack_from("<Q", data, off_at)[0], struct.unpack_from("<Q", data, size_at)[0]
                    out[name] = bytes(data[off:off + size])
        return out
    except (struct.error, IndexError, UnicodeDecodeError) as e:
        raise ValueError(f"malformed TFLite flatbuffer ({e})") from None
