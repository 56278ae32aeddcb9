"""cpa_audit from ``CPA_AUDIT.xlsx``, read the way the harness's ``read_excel(...).astype(str)`` did under
pandas<3, quirks included (an empty 6th choice is the literal choice ``"nan"``); the zip is bounded so a
huge or malicious file is refused before it is inflated."""

from __future__ import annotations

import io
import math
import re
import zipfile
from collections.abc import Sequence

from finmerge.core import storage
from finmerge.evaluate.harness_tasks import Item, Task, TaskDataError

CPA_FILE = "CPA_AUDIT.xlsx"
CPA_SHEET = "data"
CPA_STATEMENTS = ("ア", "イ", "ウ", "エ", "オ", "カ")
CPA_CHOICE_COLUMNS = ("1", "2", "3", "4", "5", "6")
_CPA_REQUIRED = ("q_no", "question", "ア", "a_no", *CPA_CHOICE_COLUMNS, "abnormal_flg")
NAN = "nan"  # what ``astype(str)`` made of a missing value under pandas<3
# The real file is ~100 KB: anything far bigger is not the benchmark (or is a zip bomb).
MAX_XLSX_BYTES = 64 << 20
MAX_XLSX_UNZIPPED = 256 << 20  # declared sizes bound what zipfile will inflate
MAX_SHEET_ROWS = 100_000
MAX_SHEET_COLUMNS = 256
# pandas' default na_values (pandas._libs.parsers.STR_NA_VALUES, pandas 2.x): such cell texts were NaN
_NA_STRINGS = frozenset(
    {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>"}
    | {"N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
)
# What lib.maybe_convert_numeric accepts in a text cell: ASCII numbers only ("１" stays text)
_INT_RE = re.compile(r"\s*[+-]?\d+\s*", re.ASCII)
_FLOAT_RE = re.compile(r"\s*[+-]?(\d+\.?\d*(e[+-]?\d+)?|\.\d+(e[+-]?\d+)?|inf|infinity)\s*", re.ASCII | re.I)


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def excel_cell_value(value, data_type: str = "n"):
    """One openpyxl cell as pandas' openpyxl reader returned it (``_convert_cell``).

    Empty -> ``""`` (later NaN), an error cell -> NaN, a number -> int when integral (so a cell holding
    2.0 is the int 2), anything else unchanged.
    """
    if value is None:
        return ""
    if data_type == "e":
        return math.nan
    if data_type == "n" and isinstance(value, int | float) and not isinstance(value, bool):
        return int(value) if math.isfinite(value) and int(value) == value else float(value)
    return value


def _numeric(value) -> int | float | None:
    if isinstance(value, bool | int):
        return int(value)
    if isinstance(value, float):
        return value
    if isinstance(value, str):
        if _INT_RE.fullmatch(value):
            return int(value)
        if _FLOAT_RE.fullmatch(value):
            return float(value)
    return None


def pandas_str_column(values: Sequence) -> list[str]:
    """One column of :func:`excel_cell_value` values as ``read_excel(...).astype(str)`` gave it (pandas<3).

    The parser first turns na_values texts (``""``, ``"NA"``, ``"nan"`` ...) into NaN, then tries the
    whole column as numbers: all integers -> an int64 column (``"1"``); any float or NaN among numbers ->
    a float64 column, so integral values print as ``"1.0"`` and NaN as ``"nan"``. One non-numeric cell
    (``"-"``, text) keeps the column as objects, each printed by ``str`` (``1`` -> ``"1"``, NaN -> ``"nan"``).
    Under pandas>=3 ``astype(str)`` keeps NaN as a missing value instead, which is why the harness broke.
    """
    vals = [math.nan if isinstance(v, str) and v in _NA_STRINGS else v for v in values]
    nums = [v if _is_nan(v) else _numeric(v) for v in vals]
    if all(n is not None for n in nums):
        if any(isinstance(n, float) for n in nums):
            return [str(float(n)) for n in nums]
        return [str(int(n)) for n in nums]
    return [NAN if _is_nan(v) else str(v) for v in vals]


def _int_text(text: str) -> int | None:
    """``"3"`` or ``"3.0"`` (a float column) -> 3; anything else (``"-"``, ``"nan"``, ``"3.5"``) -> None."""
    n = _numeric(text)
    if n is None or _is_nan(n) or not math.isfinite(n) or int(n) != n:
        return None
    return int(n)


def _header_name(value) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def parse_cpa_sheet(
    rows: Sequence[Sequence], *, source: str = "", keep_nan_choice: bool = True, name: str = "cpa_audit"
) -> Task:
    """The cpa_audit task from the ``data`` sheet's rows (header first; cells as :func:`excel_cell_value`).

    Rows the harness drops (empty question, ``abnormal_flg == 1``) and rows it could not use (``a_no``
    not a number in 1..6) are skipped, counted in ``skipped_rows`` and described in ``notes``.
    """
    rows = [
        list(r) for r in rows if any(v != "" for v in r)
    ]  # blank rows: not items (the harness drops them too)
    if not rows:
        raise TaskDataError("sheet is empty")
    header = [_header_name(v) for v in rows[0]]
    if not header or header[0] != "key":
        raise TaskDataError(f"first column must be 'key' (the index column), got {header[:1]}")
    missing = [c for c in _CPA_REQUIRED if c not in header]
    if missing:
        raise TaskDataError(f"missing columns: {', '.join(missing)}")
    body = rows[1:]
    width = max(len(header), *(len(r) for r in body)) if body else len(header)
    body = [r + [""] * (width - len(r)) for r in body]
    wanted = ["key", "q_no", "question", *CPA_STATEMENTS, "a_no", *CPA_CHOICE_COLUMNS, "abnormal_flg"]
    # column-wise conversion: a column's type (and so "1" vs "1.0") depends on all its cells
    cols = {c: pandas_str_column([r[header.index(c)] for r in body]) for c in wanted if c in header}
    items: list[Item] = []
    notes: list[str] = []
    ids: set[str] = set()
    for i in range(len(body)):
        row_id = f"{cols['key'][i]}-{_clean_number(cols['q_no'][i])}"
        item, problem = _cpa_item(cols, i, row_id, keep_nan_choice)
        if problem:
            notes.append(f"row {row_id}: {problem}")
            continue
        if item.id in ids:  # ids must be unique for sample files; the harness numbers items itself
            item = Item(f"{item.id}#{i}", item.question, item.context, item.choices, item.gold)
        ids.add(item.id)
        items.append(item)
    if not items:
        raise TaskDataError(f"no usable rows ({len(body)} rows, all skipped)", notes)
    variant = "nan-choice-kept" if keep_nan_choice else "nan-choice-dropped"
    return Task(name, "cpa", items, source, skipped_rows=len(notes), variant=variant, notes=notes)


def _clean_number(text: str) -> str:
    n = _int_text(text)
    return str(n) if n is not None else text


def _cpa_item(cols: dict[str, list[str]], i: int, row_id: str, keep_nan_choice: bool):
    """(item, None) or (None, why the row is skipped), for row ``i`` of the converted columns."""
    question = cols["question"][i]
    if question in ("", NAN):
        return None, "empty question"
    if _numeric(cols["abnormal_flg"][i]) == 1:  # "1", "1.0" (a float column) or 1
        return None, "abnormal_flg is 1"
    a_no = _int_text(cols["a_no"][i])
    if a_no is None:
        return None, f"a_no {cols['a_no'][i]!r} is not a number"
    if not 1 <= a_no <= len(CPA_CHOICE_COLUMNS):
        return None, f"a_no {a_no} is outside 1..{len(CPA_CHOICE_COLUMNS)}"
    statements = [(k, cols[k][i]) for k in CPA_STATEMENTS if k in cols]
    context = "\n".join(f"{k}: {v}" for k, v in statements if v not in ("", NAN))
    # the harness always shows 6 choices; an empty cell is the literal "nan" (a distractor)
    choices = [cols[c][i] for c in CPA_CHOICE_COLUMNS]
    if not keep_nan_choice:
        while len(choices) > max(2, a_no) and choices[-1] == NAN:
            choices.pop()
    return Item(row_id, question, context, tuple(choices), a_no - 1), None


def _check_xlsx(data: bytes, uri: str) -> None:
    if len(data) > MAX_XLSX_BYTES:
        raise TaskDataError(f"{uri}: {len(data)} bytes, over the {MAX_XLSX_BYTES} byte limit for a task file")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise TaskDataError(f"{uri}: not an xlsx file (not a zip archive)") from exc
    with zf:
        infos = zf.infolist()
        if "xl/workbook.xml" not in {i.filename for i in infos}:
            raise TaskDataError(f"{uri}: not an xlsx workbook (no xl/workbook.xml)")
        unzipped = sum(i.file_size for i in infos)
        if unzipped > MAX_XLSX_UNZIPPED:
            raise TaskDataError(
                f"{uri}: unpacks to {unzipped} bytes, over the {MAX_XLSX_UNZIPPED} byte limit"
            )


def read_xlsx_rows(uri: str, sheet: str) -> list[list]:
    """The cells of one sheet, each as :func:`excel_cell_value`; size-checked before parsing."""
    import openpyxl

    data = storage.read_bytes(uri)
    _check_xlsx(data, uri)
    try:
        wb = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True, keep_links=False)
    except Exception as exc:  # openpyxl raises many kinds on a malformed package
        raise TaskDataError(f"{uri}: cannot open as xlsx: {type(exc).__name__}: {exc}") from exc
    try:
        if sheet not in wb.sheetnames:
            raise TaskDataError(f"{uri}: no sheet {sheet!r} (sheets: {', '.join(wb.sheetnames)})")
        ws = wb[sheet]
        ws.reset_dimensions()  # declared dimensions can be wrong; pandas does the same
        rows = []
        for row in ws.rows:
            if len(rows) >= MAX_SHEET_ROWS:
                raise TaskDataError(f"{uri}: sheet {sheet!r} has more than {MAX_SHEET_ROWS} rows")
            cells = [excel_cell_value(c.value, c.data_type) for c in row[:MAX_SHEET_COLUMNS]]
            while cells and cells[-1] == "":
                cells.pop()
            rows.append(cells)
        return rows
    except TaskDataError:
        raise
    except Exception as exc:
        raise TaskDataError(f"{uri}: cannot read sheet {sheet!r}: {type(exc).__name__}: {exc}") from exc
    finally:
        wb.close()


def load_cpa_audit(uri: str, *, keep_nan_choice: bool = True, name: str = "cpa_audit") -> Task:
    """cpa_audit from ``CPA_AUDIT.xlsx`` at any URI; a bad file raises :class:`TaskDataError` naming it."""
    rows = read_xlsx_rows(uri, CPA_SHEET)
    try:
        return parse_cpa_sheet(rows, source=uri, keep_nan_choice=keep_nan_choice, name=name)
    except TaskDataError as exc:
        raise TaskDataError(f"{uri}: {exc}", exc.notes) from exc
