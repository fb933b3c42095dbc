"""Structural check of JPEG headers, before the bytes reach MindSpore's decoder.

MindSpore 2.10's JPEG decoder takes the process down (SIGSEGV, SIGFPE or SIGABRT, no Python
exception) on a file whose header libjpeg rejects: a damaged frame header (SOF), quantisation
or Huffman table, or scan header (SOS). One such file among 1.28 million would end a training
run without a word. Damage in the entropy-coded data after the scan header only makes libjpeg
warn, and it decodes. So the headers are parsed here, with the checks libjpeg makes, in pure
Python on a few hundred bytes per image (tens of microseconds); the first problem found is
returned as text.

`jpeg_problem` also finds where the image ends: its end-of-image marker, reached by walking the
markers between scans. Bytes after it (a phone's second image, MPF data, a motion photo's video)
are never read by a decoder, so they do not make a file unreadable; a file that stops before its
end marker is truncated.
"""
from __future__ import annotations

import re
from typing import Optional

SOF_SUPPORTED = {0xC0, 0xC1, 0xC2}  # baseline, extended sequential, progressive (Huffman, 8-bit)
SOF_OTHER = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # lossless, hierarchical, arithmetic
STANDALONE = set(range(0xD0, 0xD8)) | {0x01}  # RSTn, TEM: no length field
DHT, DQT, DRI, SOS, EOI, SOI = 0xC4, 0xDB, 0xDD, 0xDA, 0xD9, 0xD8
# In entropy-coded data a 0xFF byte is followed by 0x00 (stuffing), RSTn or more 0xFF fill
# bytes; anything else is a marker.
MARKER_IN_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


class _Header:
    def __init__(self):
        self.quant: set[int] = set()
        self.huff: set[tuple[int, int]] = set()  # (class 0=DC/1=AC, id)
        self.components: dict[int, int] = {}  # component id -> quant table
        self.progressive = False


def _dqt(seg: bytes, h: _Header) -> Optional[str]:
    i = 0
    while i < len(seg):
        precision, table = seg[i] >> 4, seg[i] & 15
        if precision > 1 or table > 3:
            return "bad quantisation table header"
        i += 1 + 64 * (precision + 1)
        if i > len(seg):
            return "quantisation table runs past its segment"
        h.quant.add(table)
    return None


def _dht(seg: bytes, h: _Header) -> Optional[str]:
    i = 0
    while i < len(seg):
        if i + 17 > len(seg):
            return "Huffman table header runs past its segment"
        cls, table = seg[i] >> 4, seg[i] & 15
        if cls > 1 or table > 3:
            return "bad Huffman table class or id"
        counts = seg[i + 1:i + 17]
        total = sum(counts)
        if total > 256 or i + 17 + total > len(seg):
            return "bad Huffman table size"
        code = 0  # codes of each length must fit in that many bits (libjpeg's check)
        for length, count in enumerate(counts, start=1):
            code += count
            if code > (1 << length):
                return "bogus Huffman table"
            code <<= 1
        if cls == 0 and any(v > 15 for v in seg[i + 17:i + 17 + total]):
            return "bad DC Huffman symbol"
        h.huff.add((cls, table))
        i += 17 + total
    return None


def _sof(marker: int, seg: bytes, h: _Header) -> Optional[str]:
    if h.components:
        return "more than one frame header"
    if marker in SOF_OTHER:
        return "unsupported JPEG process (lossless, hierarchical or arithmetic coding)"
    if len(seg) < 6:
        return "short frame header"
    precision, height, width, count = seg[0], int.from_bytes(seg[1:3], "big"), \
        int.from_bytes(seg[3:5], "big"), seg[5]
    if precision != 8:
        return f"unsupported sample precision {precision}"
    if height == 0 or width == 0:
        return "zero image size"
    if count not in (1, 3, 4) or len(seg) != 6 + 3 * count:
        return "bad component count in frame header"
    for k in range(count):
        cid, sampling, table = seg[6 + 3 * k:9 + 3 * k]
        if not (1 <= sampling >> 4 <= 4 and 1 <= sampling & 15 <= 4) or table > 3 or cid in h.components:
            return "bad component in frame header"
        h.components[cid] = table
    h.progressive = marker == 0xC2
    return None


def _sos(seg: bytes, h: _Header, defined_huffman: bool) -> Optional[str]:
    if not h.components:
        return "scan before frame header"
    if len(seg) < 1:
        return "short scan header"
    count = seg[0]
    if not 1 <= count <= 4 or len(seg) != 4 + 2 * count or count > len(h.components):
        return "bad component count in scan header"
    for k in range(count):
        cid, tables = seg[1 + 2 * k], seg[2 + 2 * k]
        if cid not in h.components:
            return "scan names a component the frame does not have"
        dc, ac = tables >> 4, tables & 15
        if dc > 3 or ac > 3:
            return "bad Huffman table id in scan header"
        if defined_huffman and not h.progressive and ((0, dc) not in h.huff or (1, ac) not in h.huff):
            return "scan uses an undefined Huffman table"
        if h.components[cid] not in h.quant:
            return "component uses an undefined quantisation table"
    start, end, approx = seg[1 + 2 * count], seg[2 + 2 * count], seg[3 + 2 * count]
    if h.progressive:
        if start > end or end > 63 or (approx & 15) > 13 or (approx >> 4) > 13:
            return "bad progressive scan parameters"
    return None


def jpeg_frame_size(data: bytes) -> Optional[tuple[int, int]]:
    """(width, height) from the frame header (SOF), reached by walking the segments before it;
    None when there is none to read (jpeg_problem names what is wrong)."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while True:
        while i < n and data[i] != 0xFF:
            i += 1
        while i < n and data[i] == 0xFF:
            i += 1
        if i + 2 >= n:
            return None
        marker = data[i]
        i += 1
        if marker in STANDALONE:
            continue
        if marker in (SOI, EOI, SOS, 0x00):
            return None
        length = int.from_bytes(data[i:i + 2], "big")
        if marker in SOF_SUPPORTED or marker in SOF_OTHER:
            if length < 8 or i + 7 > n:
                return None
            return int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 3:i + 5], "big")
        if length < 2:
            return None
        i += length


def jpeg_header_problem(data: bytes) -> Optional[str]:
    """None when the headers up to the first scan are sound, else what is wrong."""
    return _first_scan(data)[0]


def jpeg_problem(data: bytes) -> Optional[str]:
    """None when a decoder reads the whole image: sound headers and an end-of-image marker
    after the scans (whatever follows it); else what is wrong."""
    problem, i = _first_scan(data)
    if problem:
        return f"damaged JPEG header: {problem}"
    while match := MARKER_IN_SCAN.search(data, i):
        marker, i = data[match.end() - 1], match.end()
        if marker == EOI:
            return None
        if marker == SOI:
            return "truncated JPEG: another image starts before this one ends"
        if marker in STANDALONE:
            continue
        length = int.from_bytes(data[i:i + 2], "big")  # DHT, SOS, DRI, ... of the next scan
        if length < 2 or i + length > len(data):
            return "truncated JPEG: a header between scans is cut short or damaged"
        i += length
    return "truncated JPEG: no end-of-image marker"


def _first_scan(data: bytes) -> tuple[Optional[str], int]:
    """(what is wrong with the headers up to the first scan or None, offset of its data)."""
    if data[:2] != b"\xff\xd8":
        return "no JPEG start marker", 0
    h, i, n, huffman_seen = _Header(), 2, len(data), False
    while True:
        while i < n and data[i] != 0xFF:  # libjpeg skips (and warns about) stray bytes
            i += 1
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            return "no scan before the end of the file", i
        marker = data[i]
        i += 1
        if marker in STANDALONE:
            continue
        if marker in (SOI, EOI, 0x00):
            return f"unexpected marker 0x{marker:02x} before the first scan", i
        if i + 2 > n:
            return "truncated header", i
        length = int.from_bytes(data[i:i + 2], "big")
        if length < 2 or i + length > n:
            return f"bad segment length for marker 0x{marker:02x}", i
        seg = data[i + 2:i + length]
        i += length
        if marker == DQT:
            problem = _dqt(seg, h)
        elif marker == DHT:
            problem = _dht(seg, h)
            huffman_seen = True
        elif marker in SOF_SUPPORTED or marker in SOF_OTHER:
            problem = _sof(marker, seg, h)
        elif marker == DRI:
            problem = None if len(seg) == 2 else "bad restart interval segment"
        elif marker == SOS:
            return _sos(seg, h, huffman_seen), i
        elif 0xC0 <= marker <= 0xFE:  # APPn, COM, DNL, DAC, JPGn, ...: skipped by length
            problem = None
        else:
            return f"invalid marker 0x{marker:02x}", i
        if problem:
            return problem, i
