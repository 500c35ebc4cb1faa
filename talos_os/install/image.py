"""The disk image a live ISO carries for the node's installer, without storing the image twice.

The ISO already holds ROOT-A's squashfs as ``talos/root.sqsh`` (its live root). Everything else of
the raw image that is not zero (GPT, ESP, GRUB, the BOOT filesystem) goes into ``talos/image.bin``,
and ``talos/image.json`` maps it back: the image's size and sha256, and pieces ``[offset, length,
source, source offset]`` with ``source`` ``data`` (image.bin) or ``root`` (root.sqsh); the gaps
between pieces are zeros. The bakery packs (:func:`pack`), the node unpacks (:func:`runs`) into the
same writer ``talos-bake install`` uses, and the sha256 proves the result is the baked image.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from talos_os.install import writer
from talos_os.install.disk import InstallError

MAP_PATH = "talos/image.json"
DATA_PATH = "talos/image.bin"
ROOT_PATH = "talos/root.sqsh"
FORMAT = 1
CHUNK = writer.CHUNK

Piece = tuple[
    int, int, str, int
]  # offset in the image, length, source ("data" | "root"), offset in the source


@dataclass(frozen=True)
class ImageMap:
    """What ``talos/image.json`` says."""

    size: int
    sha256: str
    pieces: tuple[Piece, ...]

    def to_json(self) -> str:
        doc = {
            "format": FORMAT,
            "size": self.size,
            "sha256": self.sha256,
            "pieces": [list(p) for p in self.pieces],
        }
        return json.dumps(doc, separators=(",", ":")) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ImageMap:
        try:
            doc = json.loads(text)
            if doc.get("format") != FORMAT:
                raise ValueError(f"format {doc.get('format')!r}, expected {FORMAT}")
            pieces = tuple((int(o), int(n), str(s), int(so)) for o, n, s, so in doc["pieces"])
            return cls(size=int(doc["size"]), sha256=str(doc["sha256"]), pieces=pieces)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InstallError(
                f"the ISO's {MAP_PATH} is not usable ({exc}): rebuild the ISO with talos-bake iso"
            ) from None


def _split(offset: int, data: bytes, root: tuple[int, int]) -> Iterator[tuple[int, bytes, str, int]]:
    """Cut one data run into the parts outside and inside the squashfs range ``(start, length)``."""
    start, length = root
    end = offset + len(data)
    cuts = sorted({offset, end, min(max(start, offset), end), min(max(start + length, offset), end)})
    for a, b in itertools.pairwise(cuts):
        if a == b:
            continue
        inside = start <= a and b <= start + length
        yield a, data[a - offset : b - offset], "root" if inside else "data", a - start if inside else -1


def pack(raw: Path, root: tuple[int, int], data_out: Path) -> ImageMap:
    """Write ``raw``'s non-zero bytes outside ``root`` (the squashfs' offset and length in the image)
    to ``data_out``; returns the map that puts the image back together."""
    h = hashlib.sha256()
    pieces: list[Piece] = []
    written = 0
    with open(data_out, "wb") as out:
        for offset, item in writer.coalesce(writer.runs(raw)):
            if isinstance(item, int):
                writer.update_zeros(h, item)
                continue
            h.update(item)
            for at, part, source, source_offset in _split(offset, item, root):
                if source == "data":
                    out.write(part)
                    source_offset = written
                    written += len(part)
                last = pieces[-1] if pieces else None
                if (
                    last
                    and last[2] == source
                    and last[0] + last[1] == at
                    and last[3] + last[1] == source_offset
                ):
                    pieces[-1] = (last[0], last[1] + len(part), source, last[3])
                else:
                    pieces.append((at, len(part), source, source_offset))
    return ImageMap(size=raw.stat().st_size, sha256=h.hexdigest(), pieces=tuple(pieces))


def runs(image: ImageMap, data: Path, root: Path) -> Iterator[writer.Run]:
    """The image's runs for :func:`talos_os.install.writer.write`, read from the ISO's two files."""
    pos = 0
    with open(data, "rb") as fdata, open(root, "rb") as froot:
        for offset, length, source, source_offset in image.pieces:
            if offset > pos:
                yield pos, offset - pos
            f = froot if source == "root" else fdata
            done = 0
            while done < length:
                f.seek(source_offset + done)
                chunk = f.read(min(CHUNK, length - done))
                if not chunk:
                    raise InstallError(
                        f"the ISO's {source} file ends early: the ISO is damaged; write it again"
                    )
                yield offset + done, chunk
                done += len(chunk)
            pos = offset + length
    if pos < image.size:
        yield pos, image.size - pos
