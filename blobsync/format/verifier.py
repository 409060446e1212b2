"""The rules of a valid sealed blob, in one place: checked as the bytes stream past.

``SealedVerifier`` is sans-IO: it is fed chunks in order and hands the body (the
ciphertext of a symkey blob, the payload of an external one) to a callback as it goes.
It holds at most the head (``MAX_HEAD_SIZE`` bytes) and the last ``TAG_SIZE`` bytes seen,
which may be the tag. Whoever needs the blob checked uses it: the client's ``Opener``
(which decrypts what it is handed), ``check_sealed`` (a whole blob in memory) and the
server's store (which keeps no plaintext and has no key, so checks the structure only).
``check_structure`` applies the same rules to a whole blob in memory in one call (the
server's stream batches: a verifier fed once cost three times as much).

The rules:
- the head parses (a 736-character preamble, or a legacy 542-character one, then a space);
- its preamble names the blob's own id and a revision we accept (``Preamble.check``);
- a symkey blob has at least its 16-byte tag after the head;
- an external blob's payload has exactly the size its preamble states (when it states one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .errors import InvalidBlob
from .preamble import MAX_HEAD_SIZE, TAG_SIZE, Preamble, Scheme, SealedHead, parse_sealed_head


def _ignore(_piece: memoryview) -> None:
    pass


@dataclass(frozen=True, slots=True)
class Verified:
    """A sealed blob whose structure holds (a symkey tag is still to be checked with the key).

    ``body_size`` counts the body handed on, ``tail`` the bytes held back at the end: the
    tag of a symkey blob, the last bytes of an external payload (the caller hands them on).
    """

    head: SealedHead
    body_size: int
    tail: bytes

    @property
    def preamble(self) -> Preamble:
        return self.head.preamble

    @property
    def external(self) -> bool:
        return self.head.preamble.scheme is not Scheme.SYMKEY


class SealedVerifier:
    """Check one sealed blob fed in chunks; any broken rule is InvalidBlob.

    ``on_head(head)`` runs once the head checked out, before any body is handed on (the
    Opener sets up its cipher there, or refuses a symkey blob it has no key for).
    ``on_body(piece)`` gets the body as it comes, less the last ``TAG_SIZE`` bytes; a
    piece is only valid during the call.
    """

    def __init__(
        self,
        blob_id: str,
        *,
        on_head: Callable[[SealedHead], object] | None = None,
        on_body: Callable[[memoryview], object] = _ignore,
    ) -> None:
        self._blob_id = blob_id
        self._on_head = on_head
        self._on_body = on_body
        self._head_buf = bytearray()
        self._tail = bytearray()
        self.head: SealedHead | None = None
        self.body_size = 0

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        view = memoryview(chunk)
        if self.head is None:
            room = MAX_HEAD_SIZE - len(self._head_buf)
            self._head_buf += view[:room]
            head = parse_sealed_head(self._head_buf)  # InvalidBlob when garbled
            if head is None:
                return  # every byte went into the head buffer: room was not exhausted
            head.preamble.check(self._blob_id)
            if self._on_head is not None:
                self._on_head(head)
            # Set last: a head is only taken once everything about it checked out.
            self.head = head
            # A legacy head is shorter than the buffer: what follows it is body already.
            extra = bytes(self._head_buf[head.size :])
            self._head_buf = bytearray()
            if extra:
                self._take(memoryview(extra))
            view = view[room:]
        if view:
            self._take(view)

    def _take(self, view: memoryview) -> None:
        if len(view) < TAG_SIZE:
            self._tail += view
            over = len(self._tail) - TAG_SIZE
            if over > 0:
                piece = bytes(self._tail[:over])
                del self._tail[:over]
                self._hand_on(memoryview(piece))
            return
        if self._tail:
            piece = bytes(self._tail)
            self._tail.clear()
            self._hand_on(memoryview(piece))
        cut = len(view) - TAG_SIZE
        if cut:
            self._hand_on(view[:cut])
        self._tail += view[cut:]

    def _hand_on(self, piece: memoryview) -> None:
        self.body_size += len(piece)
        self._on_body(piece)

    def finish(self) -> Verified:
        """Call once, at the end of input: the checked structure, or InvalidBlob."""
        if self.head is None:
            raise InvalidBlob("sealed blob: cut short inside its head")
        tail = bytes(self._tail)
        pre = self.head.preamble
        if pre.scheme is Scheme.SYMKEY:
            if len(tail) < TAG_SIZE:
                raise InvalidBlob("sealed blob: cut short before its tag")
        else:
            size = self.body_size + len(tail)
            if pre.content_size is not None and pre.content_size != size:
                raise InvalidBlob(f"external blob: {size} bytes, preamble says {pre.content_size}")
        return Verified(self.head, self.body_size, tail)


def check_structure(blob_id: str, blob: bytes) -> SealedHead:
    """SealedVerifier's rules on a whole blob in memory, the same errors as feeding it all
    then ``finish``: one parse of the head, no copy of the body."""
    head = parse_sealed_head(blob)  # InvalidBlob when garbled; it reads MAX_HEAD_SIZE bytes
    if head is None:
        raise InvalidBlob("sealed blob: cut short inside its head")
    head.preamble.check(blob_id)
    rest = len(blob) - head.size  # the body and the tail
    pre = head.preamble
    if pre.scheme is Scheme.SYMKEY:
        if rest < TAG_SIZE:
            raise InvalidBlob("sealed blob: cut short before its tag")
    elif pre.content_size is not None and pre.content_size != rest:
        raise InvalidBlob(f"external blob: {rest} bytes, preamble says {pre.content_size}")
    return head
