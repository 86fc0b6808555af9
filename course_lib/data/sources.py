"""Rows from whatever a learner has: a file path, a list, a pandas DataFrame, a `datasets` Dataset.

`load_rows` turns each of these into plain Python rows (dicts of str, int, float, bool, None, lists and dicts)
and records where every row came from, so that validation can say "data.csv line 7" rather than "row 5".
It never validates: a row that cannot even be parsed becomes an `UnreadableRow` at its position, and the rows
around it are kept. Only a file that cannot be read at all raises `FileFormatError`.

pandas and datasets are recognised only when already imported: a source of their type implies they are.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow
import pyarrow.parquet

FILE_FORMATS = ("auto", "jsonl", "json", "csv", "tsv", "parquet")

SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
                  ".tab": "tsv", ".parquet": "parquet"}
# A JSON object with one of these keys is a single row, not a wrapper around a list of rows.
ROW_KEYS = ("text", "instruction", "output", "messages", "conversations", "prompt", "completion")
# CSV cells of these columns hold JSON (a list of turns) when a learner saves chat data from a spreadsheet.
JSON_COLUMNS = ("messages", "conversations", "prompt", "completion")
CSV_DELIMITERS = (",", ";", "\t", "|")
EXCEL_SUFFIXES = (".xlsx", ".xlsm", ".xls", ".ods")

# Longest byte-order mark first: the UTF-32 LE mark starts with the UTF-16 LE one.
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le", "UTF-32"), (codecs.BOM_UTF32_BE, "utf-32-be", "UTF-32"),
         (codecs.BOM_UTF8, "utf-8", "UTF-8"), (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16"),
         (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16"))
_GUESS_WINDOW = 1_000_000  # bytes around a bad byte given to charset_normalizer: whole files can be slow to guess


class FileFormatError(ValueError):
    """A data file that cannot be read at all (the message names the file and, where there is one, the line)."""


@dataclass(frozen=True)
class UnreadableRow:
    """A row a file holds but that could not be parsed (e.g. a JSONL line that is not JSON); validation rejects it by its reason."""

    reason: str


class LoadedRows(list):
    """The rows of a source, in order, with `origins[i]` saying where row i came from ("data.jsonl line 5",
    "data.csv line 3", "split 'test' row 2", "DataFrame row 4") and `name` the source's name ("data.jsonl", "DataFrame", "list")."""

    origins: list[str]
    name: str

    def __init__(self, rows: Iterable = (), origins: Iterable[str] | None = None, name: str = "") -> None:
        super().__init__(rows)
        self.origins = [f"row {i}" for i in range(len(self))] if origins is None else list(origins)
        self.name = name
        if len(self.origins) != len(self):
            raise ValueError(f"{len(self)} rows but {len(self.origins)} origins")


def load_rows(source, file_format: str = "auto", encoding: str | None = None) -> LoadedRows:
    """Rows of a file path (str/Path), a list/tuple/iterable of rows, a pandas DataFrame, a datasets.Dataset or DatasetDict."""
    file_format = _checked_format(file_format)
    if isinstance(source, (str, os.PathLike)):
        return _file_rows(Path(source).expanduser(), file_format, encoding)
    if isinstance(source, (bytes, bytearray)):
        raise TypeError("pass a file path or a list of rows, not bytes")
    if _is_dataframe(source):
        return _dataframe_rows(source)
    hf_rows = _datasets_rows(source)
    if hf_rows is not None:
        return hf_rows
    if isinstance(source, Mapping):
        raise TypeError("got a single row (a dict): pass a list of rows, e.g. load_rows([row])")
    if isinstance(source, Iterable):
        return _python_rows(source)
    raise TypeError(f"cannot read rows from a {type(source).__name__}: pass a file path, a list of rows, "
                    "a pandas DataFrame or a datasets Dataset")


def read_text(path, encoding: str | None = None) -> str:
    """A text file's contents: UTF-8 with or without BOM, UTF-16/32 with BOM; any other bytes raise FileFormatError naming the line."""
    path = Path(path)
    return _decode(path.read_bytes(), path.name, encoding)


def _checked_format(file_format: str) -> str:
    fmt = str(file_format).lower()
    if fmt not in FILE_FORMATS:
        raise ValueError(f"unknown file_format {file_format!r}: use one of {', '.join(map(repr, FILE_FORMATS))}")
    return fmt


# ----------------------------------------------------------------------------------------------- text decoding

def _decode(data: bytes, name: str, encoding: str | None) -> str:
    if encoding is not None:
        codecs.lookup(encoding)  # an unknown name fails here, before it could look like a decoding problem
        codec, label, skip = encoding, encoding, 0
    else:
        codec, label, skip = next(((c, lab, len(bom)) for bom, c, lab in _BOMS if data.startswith(bom)),
                                  _without_bom(data))
    try:
        text = data[skip:].decode(codec)
    except UnicodeDecodeError as error:
        raise FileFormatError(_decode_message(data, name, error, codec, label, skip, encoding)) from None
    # An explicit encoding='utf-8' (or 'utf-16-le') leaves the byte-order mark in the text; it is never content.
    return text[1:] if text.startswith("\ufeff") else text


def _without_bom(data: bytes) -> tuple[str, str, int]:
    """UTF-16 saved without a byte-order mark is valid UTF-8 full of NUL bytes: tell it by where the NULs fall."""
    head = data[:4096]
    even, odd = head[0::2].count(0), head[1::2].count(0)
    if len(head) >= 4 and max(even, odd) > 0.4 * len(head) / 2 and min(even, odd) < 0.05 * len(head) / 2:
        return ("utf-16-le", "UTF-16", 0) if odd > even else ("utf-16-be", "UTF-16", 0)
    return "utf-8", "UTF-8", 0


def _decode_message(data: bytes, name: str, error: UnicodeDecodeError, codec: str, label: str, skip: int,
                    encoding: str | None) -> str:
    position = skip + error.start
    line = data[skip:position].decode(codec, errors="replace").count("\n") + 1
    where = f"{name}, line {line}: byte 0x{data[position]:02X} is not {label}"
    if encoding is None and skip:
        return f"{where}, though the file starts with a {label} byte-order mark; save it again as UTF-8"
    preview = ""
    guess = _guess_encoding(data, position)
    if guess is not None and codecs.lookup(guess).name == codecs.lookup(codec).name:
        guess = None
    if guess is not None:
        start = data.rfind(b"\n", 0, position) + 1
        end = data.find(b"\n", position)
        shown = data[start:end if end >= 0 else len(data)].decode(guess, errors="replace").strip()[:80]
        preview = f" (read so, line {line} says {shown!r})"
    if encoding is None:
        if guess:
            return f"{where} (the file looks like {guess}); save it as UTF-8, or pass encoding='{guess}'{preview}"
        return f"{where}; save it as UTF-8, or pass the encoding it was saved in, e.g. encoding='latin-1'"
    if guess:
        return f"{where} (the file looks like {guess}); pass encoding='{guess}'{preview}, or save it as UTF-8"
    return f"{where}; pass the encoding the file was saved in, or save it as UTF-8"


def _guess_encoding(data: bytes, position: int) -> str | None:
    try:
        from charset_normalizer import from_bytes
    except ImportError:  # only a better message depends on it
        return None
    if len(data) > 2 * _GUESS_WINDOW:
        start = max(0, position - _GUESS_WINDOW)
        start = data.find(b"\n", start) + 1 if start else 0  # start on a whole line, not inside a character
        data = data[start:position + _GUESS_WINDOW]
    # Western text (few non-ASCII bytes) is what Excel and Notepad write as Windows-1252; statistical guessers
    # often take a short sample for a Mac, Central European or even Chinese code page and would garble it.
    non_ascii = sum(byte > 127 for byte in data) / max(len(data), 1)
    if non_ascii < 0.3:
        try:
            data.decode("cp1252")
            return "cp1252"
        except UnicodeDecodeError:
            pass
    best = from_bytes(data).best()
    if best is None or codecs.lookup(best.encoding).name in ("utf-8", "ascii"):
        return None
    return best.encoding


# ------------------------------------------------------------------------------------------------------- files

def _file_rows(path: Path, file_format: str, encoding: str | None) -> LoadedRows:
    if not path.exists():
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise FileNotFoundError(f"no data file at {path}{where}")
    if path.is_dir():
        raise FileFormatError(f"{path} is a folder, not a data file: pass the path of a file in it")
    name = path.name
    if file_format == "auto":
        file_format = SUFFIX_FORMATS.get(path.suffix.lower(), "")
        if not file_format and path.suffix.lower() in EXCEL_SUFFIXES:
            raise FileFormatError(f"{name} is a spreadsheet: save it as 'CSV UTF-8', or read it with "
                                  "pandas.read_excel and pass the DataFrame")
    if file_format == "parquet":
        return _parquet_rows(path)
    data = path.read_bytes()
    if not file_format:
        if data.startswith(b"PAR1"):
            return _parquet_rows(path)
        text = _decode(data, name, encoding)
        file_format = _sniff_format(text, name)
    else:
        text = _decode(data, name, encoding)
    if file_format in ("csv", "tsv"):
        return _csv_rows(text, name, "\t" if file_format == "tsv" else _sniff_delimiter(text))
    return _json_file_rows(text, name) if file_format == "json" else _jsonl_rows(text, name)


def _sniff_format(text: str, name: str) -> str:
    first = text.lstrip()[:1]
    if first == "[":
        return "json"
    if first == "{":
        return "jsonl"
    accepted = ", ".join(f for f in FILE_FORMATS if f != "auto")
    seen = "the file is empty" if not first else f"it starts with {first!r}, not '[' or '{{'"
    raise FileFormatError(f"cannot tell the format of {name} ({seen}): the formats read are {accepted}; "
                          f"name the file by its format (e.g. data.jsonl) or pass file_format='csv' (or another)")


# -------------------------------------------------------------------------------------------------- JSON, JSONL

def _lines(text: str) -> list[str]:
    # Not str.splitlines: that also splits on U+2028 and form feeds, which JSON strings may hold raw.
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _jsonl_rows(text: str, name: str) -> LoadedRows:
    lines = _lines(text)
    if sum(1 for line in lines if line.strip()) > 1 and text.lstrip()[:1] in ("[", "{"):
        # A pretty-printed JSON document saved as .jsonl parses whole; line by line every row would be lost.
        try:
            return _json_structure_rows(json.loads("\n".join(lines)), name)
        except json.JSONDecodeError:
            pass
    rows = _jsonl_lines_rows(lines, name)
    if sum(isinstance(row, UnreadableRow) for row in rows) * 2 > len(rows):
        # Most lines fail: objects written one after another with indent= (pretty-printed), not one per line.
        return _json_stream_rows("\n".join(lines), name) or rows
    return rows


def _json_stream_rows(text: str, name: str) -> LoadedRows | None:
    """Rows of JSON values written one after another (each may span lines), or None if the text is not that."""
    decoder, rows, origins, position = json.JSONDecoder(), [], [], 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return LoadedRows(rows, origins, name) if rows else None
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            return None
        origins.append(f"{name} line {text.count(chr(10), 0, position) + 1}")
        rows.append(value)
        position = end


def _jsonl_lines_rows(lines: list[str], name: str) -> LoadedRows:
    rows, origins = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            try:  # a line copied out of a JSON list keeps its trailing comma
                rows.append(json.loads(line.rstrip().removesuffix(",")))
            except json.JSONDecodeError:
                rows.append(UnreadableRow(f"not valid JSON ({error.msg} at column {error.colno})"))
        origins.append(f"{name} line {number}")
    return LoadedRows(rows, origins, name)


def _json_file_rows(text: str, name: str) -> LoadedRows:
    lines = _lines(text)
    normalized = "\n".join(lines)
    if not normalized.strip():
        raise FileFormatError(f"{name} is empty: expected a JSON list of rows")
    try:
        value = json.loads(normalized)
    except json.JSONDecodeError as error:
        if _is_jsonl_error(error, normalized) or _looks_like_jsonl(lines):
            return _jsonl_lines_rows(lines, name)  # really JSONL, saved as .json
        raise FileFormatError(f"{name}, line {error.lineno}, column {error.colno}: not valid JSON ({error.msg})") \
            from None
    return _json_structure_rows(value, name)


def _is_jsonl_error(error: json.JSONDecodeError, text: str) -> bool:
    # "Extra data" after a first value that is a whole line: one row per line, not one document.
    first_line = text.lstrip().split("\n", 1)[0]
    if error.msg != "Extra data" or error.lineno == text.count("\n", 0, len(text) - len(text.lstrip())) + 1:
        return False
    try:
        json.loads(first_line)
    except json.JSONDecodeError:
        return False
    return True


def _looks_like_jsonl(lines: list[str]) -> bool:
    # Two lines that are whole JSON objects on their own: a JSONL file with a broken line, not a broken document.
    found = 0
    for line in lines:
        if line.strip().startswith("{"):
            try:
                found += isinstance(json.loads(line), dict)
            except json.JSONDecodeError:
                continue
            if found == 2:
                return True
    return False


def _json_structure_rows(value, name: str) -> LoadedRows:
    if isinstance(value, list):
        return LoadedRows(value, [f"{name} item {i}" for i in range(len(value))], name)
    if not isinstance(value, dict):
        raise FileFormatError(f"{name} holds a single {_json_kind(value)}: expected a list of rows")
    lists = [key for key, item in value.items() if isinstance(item, list) and any(isinstance(x, dict) for x in item)]
    wrappers = [key for key in lists if key not in ROW_KEYS]  # {"text": "about", "data": [rows]} wraps its rows
    if len(wrappers) == 1 and all(isinstance(x, dict) for x in value[wrappers[0]]):
        key = wrappers[0]
        return LoadedRows(value[key], [f"{name} {key}[{i}]" for i in range(len(value[key]))], name)
    if any(key in value for key in ROW_KEYS) and not _pandas_columns(value):
        return LoadedRows([value], [f"{name} (the whole file)"], name)
    pandas_rows = _pandas_orient_rows(value)
    if pandas_rows is not None:
        labels, rows = pandas_rows
        return LoadedRows(rows, [f"{name} row {label}" for label in labels], name)
    if not lists:
        empty = [key for key, item in value.items() if isinstance(item, list)]
        if len(empty) == 1:  # {"data": []}: no rows, which validation reports; not an unreadable file
            return LoadedRows([], [], name)
    if len(lists) == 1:
        key = lists[0]
        return LoadedRows(value[key], [f"{name} {key}[{i}]" for i in range(len(value[key]))], name)
    keys = ", ".join(repr(key) for key in list(value)[:8]) + (", ..." if len(value) > 8 else "")
    held = f"several lists of rows ({', '.join(map(repr, lists))})" if lists else "no list of rows"
    raise FileFormatError(f"{name} holds an object with the keys {keys} and {held}: expected a list of rows, "
                          "an object holding one list of rows (e.g. {\"data\": [...]}), or a single row")


def _pandas_columns(value: dict) -> bool:
    # DataFrame.to_json()'s default (orient="columns"): {column: {row label: cell}}, the same labels in every column
    if not value or not all(isinstance(column, dict) for column in value.values()):
        return False
    if not any(key in value for key in ROW_KEYS):  # orient="index" looks the same, with the fields inside
        return False
    labels = [tuple(column) for column in value.values()]
    return all(label == labels[0] for label in labels)


def _pandas_orient_rows(value: dict) -> tuple[list, list] | None:
    """Rows of the other shapes DataFrame.to_json writes (orient columns, index or split), else None."""
    if _pandas_columns(value):
        labels = list(next(iter(value.values())))
        return labels, [{column: cells[label] for column, cells in value.items()} for label in labels]
    if set(value) >= {"columns", "data"} and isinstance(value["data"], list):  # orient="split"
        columns = value["columns"]
        labels = value.get("index") or list(range(len(value["data"])))
        return labels, [dict(zip(columns, cells)) for cells in value["data"]]
    if value and all(isinstance(row, dict) for row in value.values()) and any(  # orient="index"
            key in row for row in value.values() for key in ROW_KEYS):
        return list(value), list(value.values())
    return None


def _json_kind(value) -> str:
    if isinstance(value, bool):
        return "true/false value"
    if isinstance(value, (int, float)):
        return "number"
    return "string" if isinstance(value, str) else "null"


# ----------------------------------------------------------------------------------------------------- CSV, TSV

def _sniff_delimiter(text: str) -> str:
    first = next((line for line in io.StringIO(text, newline="") if line.strip()), "")
    best = max(CSV_DELIMITERS, key=first.count)  # ties go to the earlier, so ',' when there is none
    return best if first.count(best) else ","


def _csv_rows(text: str, name: str, delimiter: str) -> LoadedRows:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    rows, origins = [], []
    limit = csv.field_size_limit(2**31 - 1)  # the default 128 KiB per cell is shorter than some documents
    try:
        while True:
            line = reader.line_num + 1  # a quoted cell can span lines: the record starts on the next unread one
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as error:
                if "unexpected end of data" in str(error):  # every line after the quote became one cell
                    raise FileFormatError(f"{name}, line {line}: a quote opened in this record is never closed, so "
                                          "the rest of the file would read as one cell; close or remove it") from None
                if header is None:
                    raise FileFormatError(f"{name}, line {line}: not valid CSV ({error})") from None
                rows.append(UnreadableRow(f"not valid CSV ({error})"))
                origins.append(f"{name} line {line}")
                continue
            if not any(record):  # a blank line, or a row of empty cells that spreadsheets leave behind
                continue
            if header is None:
                header = _csv_header(record, name, line)
                continue
            rows.append(_csv_row(record, header))
            origins.append(f"{name} line {line}")
    finally:
        csv.field_size_limit(limit)
    if header is None:
        raise FileFormatError(f"{name}: no header row (the file is empty); the first line must name the columns")
    return LoadedRows(rows, origins, name)


def _csv_header(record: list[str], name: str, line: int) -> list[str]:
    header = [cell.strip() for cell in record]
    blank = [str(i + 1) for i, cell in enumerate(header) if not cell]
    if blank:
        raise FileFormatError(f"{name}, line {line}: the header has no name for column {', '.join(blank)}; "
                              "the first line must name every column")
    repeated = sorted({cell for cell in header if header.count(cell) > 1})
    if repeated:
        raise FileFormatError(f"{name}, line {line}: the header repeats the column name "
                              f"{', '.join(map(repr, repeated))}; every column needs its own name")
    return header


def _csv_row(record: list[str], header: list[str]) -> dict | UnreadableRow:
    if len(record) > len(header):
        return UnreadableRow(f"has {len(record)} cells but the header has {len(header)}")
    row = {column: (record[i] if i < len(record) and record[i] != "" else None) for i, column in enumerate(header)}
    for column in JSON_COLUMNS:
        cell = row.get(column)
        if isinstance(cell, str) and cell.strip()[:1] == "[":
            try:
                value = json.loads(cell)
            except json.JSONDecodeError:
                continue  # stays a string, which validation reports as the wrong type
            # Only a list of turns is chat data; any other JSON in a prompt or completion cell is its text.
            if column in ("messages", "conversations") or (
                    isinstance(value, list) and value and all(isinstance(t, dict) and "role" in t for t in value)):
                row[column] = value
    return row


# ------------------------------------------------------------------------------------------------------ parquet

def _parquet_rows(path: Path) -> LoadedRows:

    try:
        table = pyarrow.parquet.read_table(path)
    except (pyarrow.ArrowException, OSError) as error:
        raise FileFormatError(f"{path.name}: not a readable Parquet file ({error})") from None
    # pandas.to_parquet stores a non-default index as such a column; it is bookkeeping, not a field of the rows.
    index_columns = [c for c in table.column_names if c.startswith("__index_level_") and c.endswith("__")]
    rows = [_plain(row) for row in table.drop_columns(index_columns).to_pylist()]
    return LoadedRows(rows, [f"{path.name} row {i}" for i in range(len(rows))], path.name)


# ------------------------------------------------------------------------------------ in-memory sources

def _python_rows(source: Iterable) -> LoadedRows:
    if isinstance(source, LoadedRows):
        return LoadedRows(source, source.origins, source.name)
    name = type(source).__name__
    rows = list(source)
    if "numpy" in sys.modules:  # rows taken from a DataFrame or Dataset (to_dict("records")) hold numpy values
        rows = [_plain_row(row) for row in rows]
    return LoadedRows(rows, None, name)


def _is_dataframe(source) -> bool:
    pandas = sys.modules.get("pandas")  # a DataFrame exists only once pandas is imported
    return pandas is not None and isinstance(source, pandas.DataFrame)


def _dataframe_rows(frame) -> LoadedRows:
    rows = [_plain(row) for row in frame.to_dict("records")]
    labels = list(frame.index)
    if labels == list(range(len(rows))):
        return LoadedRows(rows, [f"DataFrame row {i}" for i in range(len(rows))], "DataFrame")
    return LoadedRows(rows, [f"DataFrame index {label!r}" for label in labels], "DataFrame")


def _datasets_rows(source) -> LoadedRows | None:
    datasets = sys.modules.get("datasets")  # a Dataset exists only once datasets is imported
    if datasets is None:
        return None
    name = type(source).__name__
    if isinstance(source, datasets.Dataset):
        return LoadedRows([_plain(row) for row in source.to_list()], None, name)
    if isinstance(source, datasets.IterableDataset):
        return LoadedRows([_plain(row) for row in source], None, name)
    if isinstance(source, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        rows, origins = [], []
        for split, part in source.items():
            part_rows = part.to_list() if isinstance(part, datasets.Dataset) else list(part)
            rows.extend(_plain(row) for row in part_rows)
            origins.extend(f"split '{split}' row {i}" for i in range(len(part_rows)))
        return LoadedRows(rows, origins, name)
    return None


def _plain_row(row):
    """A dict row with numpy and missing values made plain; the row itself when it has none."""
    return _plain(row) if isinstance(row, dict) and _foreign(row) else row


def _foreign(value) -> bool:
    """True when a value holds anything _plain would change: numpy values, pandas' missing values, NaN."""
    if isinstance(value, dict):
        return any(_foreign(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(_foreign(item) for item in value)
    if isinstance(value, float):
        return value != value
    return value is not None and type(value).__module__ != "builtins"


def _plain(value):
    """`value` with numpy scalars and arrays as Python values and lists, and every missing value as None."""
    if value is None or (isinstance(value, (str, bool, int)) and type(value).__module__ == "builtins"):
        return value
    if isinstance(value, dict):
        return {_plain(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    module = type(value).__module__.split(".")[0]
    if module == "numpy":
        return _plain(value.tolist())  # arrays become lists (of dicts, for messages), scalars Python scalars
    if module == "pandas" and type(value).__name__ in ("NAType", "NaTType"):
        return None
    if isinstance(value, float):
        return None if value != value else float(value)
    return value
