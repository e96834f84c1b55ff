# TEMPORARY stand-in (not to be committed): the API of the compiled codec, over the hpack package.
from __future__ import annotations
import hpack
class HpackError(Exception):
    pass
class HeaderListTooLarge(HpackError):
    pass
class Decoder:
    def __init__(self, max_table_size: int = 4096, max_header_list_size: int = 65536) -> None:
        self.d = hpack.Decoder(max_header_list_size=max_header_list_size or 2**31)
        self.d.max_allowed_table_size = max_table_size
    def decode(self, data: bytes) -> list[tuple[bytes, bytes]]:
        try:
            return [(bytes(n), bytes(v)) for n, v in self.d.decode(data, raw=True)]
        except hpack.OversizedHeaderListError as e:
            raise HeaderListTooLarge(str(e))
        except hpack.HPACKError as e:
            raise HpackError(str(e))
        except Exception as e:
            raise HpackError(str(e))
class Encoder:
    def __init__(self) -> None:
        self.e = hpack.Encoder()
    def set_max_table_size(self, size: int) -> None:
        self.e.header_table_size = size
    def encode(self, headers):
        return self.e.encode(headers, huffman=False)
