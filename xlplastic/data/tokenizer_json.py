"""Reading one `tokenizer.json` of the HF `tokenizers` library, with a one-line error.

Its own module so both the tokenizer layer and the multilingual vocabulary (which names several such
files) can read one without importing each other."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from xlplastic.errors import UserError
from xlplastic.paths import as_path


def read_tokenizer_json(path: str | Path) -> Tokenizer:
    """A `tokenizer.json` (or a folder holding one)."""
    p = as_path(path).expanduser()
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise UserError(f"{p}: tokenizer file not found; expected a tokenizer.json from the `tokenizers` library")
    try:
        tok = Tokenizer.from_str(p.read_text(encoding="utf-8"))  # a local file or an object in a bucket
    except Exception as e:  # the Rust side raises a generic Exception for any parse problem
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{p}: not a valid tokenizer.json ({first})") from None
    # Hugging Face model folders often save padding / truncation settings (e.g. pad everything to 128):
    # xlplastic pads and cuts rows itself, so a loaded tokenizer encodes text to its pieces only.
    tok.no_padding()
    tok.no_truncation()
    return tok
