"""UTF-8-safe incremental detokenization: token ids in, complete characters out.

A byte-fallback tokenizer spells a character it has no piece for in single
bytes: 你 is three ids (E4 BD A0), an emoji four. Decoding the ids generated
so far after every step shows such a character as U+FFFD until its last byte
arrives, and stripping U+FFFD from the end would also delete a real U+FFFD.
`Detokenizer` works on bytes instead: each id's bytes (`Tokenizer.token_bytes`,
or the `token_bytes` signature of an export) go through an incremental UTF-8
decoder, which returns every complete character and holds back the bytes of
an incomplete one until they complete it. Bytes that can never be valid UTF-8
become U+FFFD, one per invalid sequence, as Python's decoder does. When
generation ends, a character still incomplete (the reply was cut off in the
middle of it) is left out: it was never produced.

So concatenating the deltas of a stream gives exactly `decode_text(ids)`,
whatever the steps, and for valid UTF-8 that is `tokenizer.decode(ids)`
(special ids contribute nothing). It knows nothing of models: the server,
the terminal chat and any caller of the `prefill`/`decode` signatures share it.

Example:

>>> table = [b"", b"\\xe4", b"\\xbd", b"\\xa0", "好".encode()]   # id 1-3: the bytes of 你
>>> stream = Detokenizer(table)
>>> [stream.add(i) for i in (1, 2, 3, 4)]
['', '', '你', '好']
>>> stream.add(1), stream.pending      # the first byte of another 你: held back
('', b'\xe4')
>>> stream.finish(); stream.text       # generation ended there: the half character is left out
'你好'
>>> decode_text([1, 2, 3, 4], table)
'你好'
"""

from __future__ import annotations

import codecs
from typing import Iterable, Sequence


class Detokenizer:
    """Turns a stream of token ids into text deltas that never split a character.

    Args:
        token_bytes: the UTF-8 bytes of every id ([vocab_size]; special ids b"").
    """

    def __init__(self, token_bytes: Sequence[bytes]):
        self.token_bytes = token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""  # every delta so far

    def add(self, token_id: int) -> str:
        """Feeds one id; returns the text it completes ("" while a character is incomplete)."""
        if not 0 <= token_id < len(self.token_bytes):
            raise ValueError(f"token id {token_id} outside the vocabulary of {len(self.token_bytes)}")
        delta = self._decoder.decode(self.token_bytes[token_id])
        self.text += delta
        return delta

    def extend(self, token_ids: Iterable[int]) -> str:
        """Feeds several ids; returns the text they complete."""
        return "".join([self.add(int(i)) for i in token_ids])

    @property
    def pending(self) -> bytes:
        """The bytes held back: the start of a character not yet complete."""
        return self._decoder.getstate()[0]

    def finish(self) -> None:
        """Ends the stream: an incomplete character at the end is dropped (see the module docstring)."""
        self._decoder.reset()


def decode_text(token_ids: Iterable[int], token_bytes: Sequence[bytes]) -> str:
    """The text of a whole id sequence, by the same rules as a `Detokenizer` stream (its concatenated deltas)."""
    return Detokenizer(token_bytes).extend(token_ids)
