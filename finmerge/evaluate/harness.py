"""japanese-lm-fin-harness compatible task loading, prompt rendering and metrics (no model code here).

The harness scores every task as 0-shot log-likelihood multiple choice. Three kinds of *task folder*
are recognised (/work/shared/reference/fin-harness.md §1.1):

- ``data.json`` in the harness JSON layout (cma_basics / fp2 / security_sales_1; finmerge's demo task
  ``demo_fin`` uses the cma_basics layout), named after its folder::

    {"data-type": "multiple-choice-question", "data-name": <task>,
     "data": [{"id", "question", "context", "choices": [{"id", "text"}], "answer": <0-based>, "comment"}]}

- ``CPA_AUDIT.xlsx`` (task ``cpa_audit``), read the way the harness's ``read_excel(...).astype(str)``
  did under pandas<3, quirks included (an empty 6th choice is the literal choice ``"nan"``);
- ``e*_ann.json`` chABSA annotation files (task ``chabsa``), one item per opinion.

Prompts follow fin-harness.md §3.1 (cma-style layout, with cpa_audit's wording as a variant), §3.2 (fp2)
and §3.3 (chabsa) for all nine prompt versions. Context = description + doc_to_text; the scored
continuation is ``target_delimiter + choice`` (``" "`` for chabsa except 0.3, ``""`` elsewhere), and the
context's trailing whitespace is moved to the continuation by :func:`requests_for` (§4 step 2).
The ``comment`` field (rationale / answer) is never read into a prompt.
"""

from __future__ import annotations

import io
import math
import posixpath
import re
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import numpy as np

from finmerge.core import storage

VERSIONS = (
    "default",
    "1.0-0.1",
    "1.0-0.1.2",
    "1.0-0.2",
    "1.0-0.2.1",
    "1.0-0.3",
    "1.0-0.4",
    "1.0-0.5",
    "1.0-0.6",
)
# mcq: cma_basics / security_sales_1 / demo_fin; cpa: cpa_audit wording; chabsa: sentiment of a target
LAYOUTS = ("mcq", "cpa", "fp2", "chabsa")
# chabsa has no 0.1.2 / 0.2.1 tasks: the leaderboard uses its 0.1 / 0.2 results for those versions
_CHABSA_ALIASES = {"1.0-0.1.2": "1.0-0.1", "1.0-0.2.1": "1.0-0.2"}

# ---------------------------------------------------------------------------------------------------------
# Shared header strings (fin-harness.md §3)

ALPACA = "以下は、タスクを説明する指示と、文脈のある入力の組み合わせです。要求を適切に満たす応答を書きなさい。\n\n### 指示:\n"
LLAMA2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being "
    "safe. Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal "
    "content. Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
    "something not correct. If you don't know the answer to a question, please don't share false information."
)
LLAMA2 = "<s>[INST] <<SYS>>\n" + LLAMA2_SYSTEM + "\n<</SYS>>\n\n\n"
NL = "<NL>"  # literal five characters in 0.4, not a newline

# Instructions, keyed by wording: "std" (cma_basics, security_sales_1, fp2 for 0.1-0.2) and "cpa".
_SELECT = {
    "std": "与えられた選択肢の中から、最適な答えを選んでください。",
    "cpa": "与えられた答えの組み合わせの選択肢の中から、最適な選択肢を選んでください。",
}
_DESC_01 = {
    "std": "[問題]に対する[答え]を[選択肢]の中から選んでください。\n\n\n",
    "cpa": "[問題]に対する[答え]をとして適切な記号の組み合わせを[選択肢]の中から選んでください。\n\n\n",  # sic
}
_DESC_012 = {
    "std": "[問題]に対する[答え]を[選択肢]の中からアルファベットで選んでください。\n\n\n",
    "cpa": "[問題]に対する[答え]として適切な記号の組み合わせを[選択肢]の中からアルファベットで選んでください。\n\n\n",
}
_DESC_02 = {
    "std": "質問と回答の選択肢を入力として受け取り、選択肢から回答を選択してください。"
    "なお、回答は選択肢の番号(例:0)でするものとします。\n\n\n",
    "cpa": "質問とその答えとして適切な記号の組み合わせの選択肢を入力として受け取り、選択肢から回答を選択してください。"
    "なお、回答は選択肢の番号(例:0)でするものとします。\n\n\n",
}
_DESC_DEFAULT = {
    "std": "以下の問題の適切な答えを選択肢から選んでアルファベットで答えなさい。\n\n\n",
    "cpa": "以下の問題の答えとして適切な記号の組み合わせを選択肢から選んでアルファベットで答えなさい。\n\n\n",
    "fp2": "以下の問題の適切な答えを選択肢から選んで１～４の数字で答えなさい。\n\n\n",
}


def _descriptions(wording: str) -> dict[str, str]:
    select = _SELECT[wording]
    return {
        "default": _DESC_DEFAULT[wording],
        "1.0-0.1": _DESC_01[wording],
        "1.0-0.1.2": _DESC_012[wording],
        "1.0-0.2": _DESC_02[wording],
        "1.0-0.2.1": select + "\n\n\n",
        "1.0-0.3": ALPACA + select + "\n\n\n",
        "1.0-0.4": "ユーザー: " + select + NL + "システム: 分かりました。" + NL,
        "1.0-0.5": "ユーザー: " + select + "\nシステム: 分かりました。\n\n",
        "1.0-0.6": LLAMA2,
    }


_CHABSA_ASK = "ターゲットのセンチメントをpositiveかnegativeで答えてください。"
_CHABSA_DESC = {
    "default": f"以下のセンテンスにおける、{_CHABSA_ASK}\n\n\n",
    "1.0-0.1": "[センテンス]における、[ターゲット]のセンチメントをpositiveかnegativeで選んでください。\n\n\n",
    "1.0-0.2": "センテンスとターゲットを入力として受け取り、ターゲットに関するセンチメントをpositiveかnegativeから"
    "選択してください。\n\n\n",
    "1.0-0.3": f"{ALPACA}以下のセンテンスにおける、{_CHABSA_ASK}\n\n\n",
    "1.0-0.4": f"ユーザー: センテンスにおける、{_CHABSA_ASK}{NL}システム: 分かりました。{NL}",
    "1.0-0.5": f"ユーザー: センテンスにおける、{_CHABSA_ASK}\nシステム: 分かりました。\n\n",
    "1.0-0.6": LLAMA2,
}


# ---------------------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Item:
    id: str
    question: str  # chabsa: the sentence
    context: str  # chabsa: the target
    choices: tuple[str, ...]
    gold: int  # 0-based; NEUTRAL_GOLD for a neutral chabsa opinion (always scored wrong)


@dataclass
class Task:
    name: str  # bare harness task name, e.g. "cma_basics", "cpa_audit", "chabsa"
    layout: str  # one of LAYOUTS
    items: list[Item]
    source: str = ""  # URI of data.json / CPA_AUDIT.xlsx / the chabsa folder
    skipped_rows: int = 0  # cpa: sheet rows not used; chabsa: files skipped
    variant: str = ""  # a deviation from the harness's data, e.g. "nan-choice-dropped"
    notes: list[str] = field(default_factory=list)  # one line per skipped row / file


@dataclass(frozen=True)
class Prompt:
    context: str  # description + doc_to_text, before the whitespace move
    choices: tuple[str, ...]  # doc_to_choice: the scored strings, without the delimiter
    target_delimiter: str = ""


@dataclass
class Discovery:
    tasks: list[Task] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # task (or folder URI) -> reason
    notes: dict[str, list[str]] = field(default_factory=dict)  # task -> skipped rows / files, one line each


class TaskDataError(ValueError):
    def __init__(self, message: str, notes: Iterable[str] = ()):
        super().__init__(message)
        self.notes = list(notes)  # per-row / per-file problems seen before the task was given up


def layout_for(task_name: str, data_name: str | None = None) -> str:
    names = [n.lower() for n in (data_name, task_name) if n]
    for prefix in ("fp2", "cpa", "chabsa"):  # cpa covers "cpa_audit"
        if any(n.startswith(prefix) for n in names):
            return prefix
    return "mcq"


# ---------------------------------------------------------------------------------------------------------
# Harness JSON layout (data.json)


def _text(value, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TaskDataError(f"{what}: expected a string, got {type(value).__name__}")
    return value


def parse_task(name: str, doc, source: str = "") -> Task:
    """Validate one harness data.json document; any problem raises :class:`TaskDataError`."""
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise TaskDataError('top level must be an object with a "data" list')
    data_type = doc.get("data-type")
    if data_type not in (None, "multiple-choice-question"):
        raise TaskDataError(f"data-type {data_type!r} is not multiple-choice-question")
    items = []
    for n, raw in enumerate(doc["data"]):
        where = f"item {n}"
        if not isinstance(raw, dict):
            raise TaskDataError(f"{where}: not an object")
        choices_raw = raw.get("choices")
        if not isinstance(choices_raw, list) or len(choices_raw) < 2:
            raise TaskDataError(f"{where}: needs a choices list with at least 2 entries")
        choices = tuple(
            _text(c.get("text") if isinstance(c, dict) else c, f"{where} choice {k}")
            for k, c in enumerate(choices_raw)
        )
        answer = raw.get("answer")
        if isinstance(answer, str) and answer.strip().lstrip("-").isdigit():
            answer = int(answer)
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise TaskDataError(
                f"{where}: answer {answer!r} is not a 0-based index into {len(choices)} choices"
            )
        question = _text(raw.get("question"), f"{where} question")
        if not question:
            raise TaskDataError(f"{where}: empty question")
        items.append(
            Item(
                id=str(raw.get("id", n)),
                question=question,
                context=_text(raw.get("context"), f"{where} context"),
                choices=choices,
                gold=answer,
            )
        )
    if not items:
        raise TaskDataError("no items")
    layout = layout_for(name, doc.get("data-name"))
    if layout == "chabsa":  # a data.json is multiple choice whatever its name says
        layout = "mcq"
    return Task(name=name, layout=layout, items=items, source=source)


# ---------------------------------------------------------------------------------------------------------
# cpa_audit (CPA_AUDIT.xlsx)

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


# ---------------------------------------------------------------------------------------------------------
# chabsa (e*_ann.json)

CHABSA_GLOB = "e*_ann.json"
CHABSA_CHOICES = ("positive", "negative")
NEUTRAL_GOLD = -100  # "neutral" is not a choice: the harness's gold for it, never predicted
_POLARITIES = {"positive": 0, "negative": 1, "neutral": NEUTRAL_GOLD}


def is_chabsa_file(name: str) -> bool:
    return fnmatchcase(name, CHABSA_GLOB)


def parse_chabsa_doc(doc, stem: str) -> list[Item]:
    """One opinion -> one item (question = sentence, context = target); a schema problem raises."""
    if not isinstance(doc, dict) or not isinstance(doc.get("header"), dict):
        raise TaskDataError('top level must be an object with a "header" object')
    if not isinstance(doc.get("sentences"), list):
        raise TaskDataError('"sentences" must be a list')
    doc_id = doc["header"].get("document_id") or stem
    items = []
    for n, sent in enumerate(doc["sentences"]):
        if not isinstance(sent, dict) or not isinstance(sent.get("sentence"), str):
            raise TaskDataError(f'sentence {n}: needs a "sentence" string')
        opinions = sent.get("opinions") or []
        if not isinstance(opinions, list):
            raise TaskDataError(f'sentence {n}: "opinions" must be a list')
        sid = sent.get("sentence_id", n)
        for k, op in enumerate(opinions):
            if not isinstance(op, dict) or not isinstance(op.get("target"), str):
                raise TaskDataError(f'sentence {sid} opinion {k}: needs a "target" string')
            polarity = op.get("polarity")
            if polarity not in _POLARITIES:
                raise TaskDataError(f"sentence {sid} opinion {k}: bad polarity value {polarity!r}")
            items.append(
                Item(
                    f"{doc_id}-{sid}-{k}",
                    sent["sentence"],
                    op["target"],
                    CHABSA_CHOICES,
                    _POLARITIES[polarity],
                )
            )
    return items


def load_chabsa(folder: str, *, files: Sequence[str] | None = None, name: str = "chabsa") -> Task:
    """chabsa from the ``e*_ann.json`` files of a folder (sorted, for stable ids); a bad file is skipped."""
    if files is None:
        files = _files_in(folder)
    files = sorted(f for f in files if is_chabsa_file(f))
    items: list[Item] = []
    notes: list[str] = []
    for fname in files:
        try:
            doc = storage.read_json(storage.join(folder, fname))
            items.extend(parse_chabsa_doc(doc, fname.removesuffix(".json")))
        except (storage.StorageError, TaskDataError, UnicodeDecodeError, OSError) as exc:
            notes.append(f"file {fname}: {exc}")
    if not items:
        raise TaskDataError(f"{folder}: no opinions in {len(files)} {CHABSA_GLOB} files", notes)
    return Task(name, "chabsa", items, folder, skipped_rows=len(notes), notes=notes)


# ---------------------------------------------------------------------------------------------------------
# Discovery


def _ls(uri: str) -> tuple[list[str], list[str]]:
    """(sub-folder names, file names) directly under a folder, hidden / private names left out."""
    fs, root = storage.filesystem(uri)
    dirs, files = [], []
    for entry in fs.ls(root, detail=True):
        base = posixpath.basename(str(entry["name"]).rstrip("/"))
        if base and not base.startswith((".", "_")):
            (dirs if entry.get("type") == "directory" else files).append(base)
    return sorted(dirs), sorted(files)


def _files_in(uri: str) -> list[str]:
    try:
        fs, root = storage.filesystem(uri)
        return sorted(posixpath.basename(str(p).rstrip("/")) for p in fs.ls(root, detail=False))
    except Exception:
        return []


def _task_kind(files: Sequence[str]) -> str | None:
    if "data.json" in files:
        return "json"
    if CPA_FILE in files:
        return "cpa"
    if any(is_chabsa_file(f) for f in files):
        return "chabsa"
    return None


_KIND_NAMES = {"cpa": "cpa_audit", "chabsa": "chabsa"}  # the harness's names, whatever the folder is called


def _load_task(kind: str, name: str, tdir: str, files: list[str], cpa_nan_choice: bool) -> Task:
    if kind == "json":
        uri = storage.join(tdir, "data.json")
        return parse_task(name, storage.read_json(uri), source=uri)
    if kind == "cpa":
        return load_cpa_audit(storage.join(tdir, CPA_FILE), keep_nan_choice=cpa_nan_choice, name=name)
    return load_chabsa(tdir, files=files, name=name)


_UNREADABLE = {"json": "unreadable data.json", "cpa": f"unreadable {CPA_FILE}", "chabsa": "unreadable chabsa"}


def discover_tasks(
    harness_dirs: list[str], only: list[str] | None = None, *, cpa_nan_choice: bool = True
) -> Discovery:
    """Load every task folder under each folder; a problem skips the task with a reason.

    A task folder holds ``data.json`` (task named after the folder), ``CPA_AUDIT.xlsx`` (``cpa_audit``)
    or ``e*_ann.json`` files (``chabsa``); a harness folder that is itself a task folder is one task.
    ``only`` restricts to these task names (the folder name ``cpa`` also selects cpa_audit); a requested
    task found nowhere is reported as skipped. ``cpa_nan_choice=False`` drops cpa_audit's empty "nan"
    choices (not the leaderboard's data). Rows / files skipped inside a loaded task go to ``notes``.
    """
    out = Discovery()
    seen: set[str] = set()
    covered: set[str] = set()  # names in `only` that some folder answered (loaded or skipped)
    for hdir in harness_dirs:
        hdir = str(hdir).rstrip("/")
        try:
            if not storage.exists(hdir):
                out.skipped[hdir] = "harness folder not found"
                continue
            subdirs, files = _ls(hdir)
            if _task_kind(files):
                candidates = [(posixpath.basename(hdir), hdir, files)]
            else:
                candidates = [(d, storage.join(hdir, d), None) for d in subdirs]
        except Exception as exc:  # unreachable bucket, permissions, not a folder ...
            out.skipped[hdir] = f"cannot list harness folder: {type(exc).__name__}: {exc}"
            continue
        for folder, tdir, files in candidates:
            try:
                files = files if files is not None else _ls(tdir)[1]
            except Exception as exc:
                files = []
                out.notes.setdefault(folder, []).append(f"cannot list {tdir}: {type(exc).__name__}: {exc}")
            kind = _task_kind(files)
            name = _KIND_NAMES.get(kind, folder)
            if only is not None and folder not in only and name not in only:
                continue
            covered.update((folder, name))
            if name in seen:
                out.skipped[f"{name}@{tdir}"] = "duplicate task name (already loaded from an earlier folder)"
                continue
            if kind is None:
                others = ", ".join(files[:5]) or "empty folder"
                out.skipped[name] = f"no data.json, {CPA_FILE} or {CHABSA_GLOB} in task folder ({others})"
                continue
            try:
                task = _load_task(kind, name, tdir, files, cpa_nan_choice)
            except (storage.StorageError, TaskDataError, UnicodeDecodeError, OSError) as exc:
                out.skipped[name] = f"{_UNREADABLE[kind]}: {exc}"
                if getattr(exc, "notes", None):
                    out.notes[name] = list(exc.notes)
                continue
            seen.add(name)
            out.tasks.append(task)
            if task.notes:
                out.notes[name] = list(task.notes)
    for name in only or []:
        if name not in covered and name not in out.skipped:
            out.skipped[name] = "task folder not found in harness_dirs"
    return out


# ---------------------------------------------------------------------------------------------------------
# Prompt rendering


def normalize_version(version: str) -> str:
    v = str(version).strip()
    if v != "default" and not v.startswith("1.0-"):
        v = f"1.0-{v}"
    if v not in VERSIONS:
        raise ValueError(f"unknown prompt version {version!r}; known: {', '.join(VERSIONS)}")
    return v


def effective_version(layout: str, version: str) -> str:
    """The version actually rendered: chabsa's 0.1.2 / 0.2.1 are its 0.1 / 0.2."""
    v = normalize_version(version)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    return _CHABSA_ALIASES.get(v, v) if layout == "chabsa" else v


def harness_task_name(task: str, version: str, layout: str | None = None) -> str:
    """The leaderboard's task name: bare for ``default``, else ``<task>-<version>`` (e.g. ``chabsa-1.0-0.1``
    for chabsa at 1.0-0.1.2). ``layout`` defaults to the one the task name implies."""
    v = effective_version(layout or layout_for(task), version)
    return task if v == "default" else f"{task}-{v}"


def _letters(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def _dash_list(choices, sep: str) -> str:
    return sep.join(f"- {c}" for c in choices)


# doc_to_text renderers: (item, wording) -> (text, scored choices)
Renderer = Callable[[Item, str], tuple[str, tuple[str, ...]]]


def _mcq_default(it: Item, w: str):
    x = f"{it.context}\n" if it.context else ""
    letters = _letters(len(it.choices))
    lines = "".join(f"{a}: {c}\n" for a, c in zip(letters, it.choices, strict=True))
    return f"【問題】\n{it.question}\n{x}\n【選択肢】\n{lines}\n【答え】\n", tuple(letters)


def _mcq_01(it: Item, w: str):
    x = f"{it.context}\n" if it.context else ""
    return f"[問題]:{it.question}\n{x}[選択肢]:[{', '.join(it.choices)}]\n[答え]:", it.choices


def _mcq_012(it: Item, w: str):
    x = f"{it.context}\n" if it.context else ""
    letters = _letters(len(it.choices))
    shown = ", ".join(f"{a}:{c}" for a, c in zip(letters, it.choices, strict=True))
    return f"[問題]:{it.question}\n{x}[選択肢]:[{shown}]\n[答え]:", tuple(letters)


def _mcq_02(it: Item, w: str):
    x = f"{it.context}\n" if it.context else ""
    shown = ",".join(f"{i}.{c}" for i, c in enumerate(it.choices))
    return f"質問:{it.question}\n{x}選択肢:{shown}\n回答:", tuple(str(i) for i in range(len(it.choices)))


def _mcq_021(it: Item, w: str):
    x = f"{it.context}\n" if it.context else ""
    shown = "".join(f"- {c}\n" for c in it.choices)
    return f"質問:{it.question}\n{x}選択肢:\n{shown}回答:", it.choices


def _mcq_03(it: Item, w: str):
    x = f"{it.context}\n" if it.context else ""
    shown = _dash_list(it.choices, "\n")
    return (
        f"### 入力:\n{it.question}\n{x}出力は以下から選択してください：\n{shown}\n\n### 応答:\n",
        it.choices,
    )


def _mcq_04(it: Item, w: str):
    xb = f"\n{it.context}" if it.context else ""
    shown = _dash_list(it.choices, NL)
    return f"ユーザー: 質問：{it.question}{xb}{NL}選択肢：{NL}{shown}{NL}システム: ", it.choices


def _mcq_05(it: Item, w: str):
    xb = f"\n{it.context}" if it.context else ""
    shown = _dash_list(it.choices, "\n")
    return f"ユーザー: 質問：{it.question}{xb}\n選択肢：\n{shown}\nシステム: ", it.choices


def _mcq_06(it: Item, w: str):
    xb = f"\n{it.context}" if it.context else ""
    shown = _dash_list(it.choices, "\n")
    return (
        f"{_SELECT[w]}\n\n質問：{it.question}{xb}出力は以下から選択してください：\n{shown} [/INST] ",
        it.choices,
    )


def _fp2_default(it: Item, w: str):
    return f"【問題】\n{it.question}\n{it.context}\n\n【答え】\n", it.choices


def _fp2_01(it: Item, w: str):
    return f"[問題]:{it.question}\n{it.context}\n[選択肢]:[{', '.join(it.choices)}]\n[答え]:", it.choices


def _fp2_012(it: Item, w: str):
    letters = _letters(len(it.choices))
    shown = ", ".join(f"{a}:{c}" for a, c in zip(letters, it.choices, strict=True))
    return f"[問題]:{it.question}\n{it.context}\n[選択肢]:[{shown}]\n[答え]:", tuple(letters)


def _fp2_02(it: Item, w: str):
    shown = ",".join(f"{i}.{c}" for i, c in enumerate(it.choices))
    return (
        f"質問:{it.question}\n{it.context}\n選択肢:{shown}\n回答:",
        tuple(str(i) for i in range(len(it.choices))),
    )


def _fp2_021(it: Item, w: str):
    return f"質問:{it.question}\n{it.context}\n\n回答:", it.choices


def _fp2_03(it: Item, w: str):
    return f"### 入力:\n{it.question}\n{it.context}\n\n### 応答:\n", it.choices


def _fp2_04(it: Item, w: str):
    return f"ユーザー: {it.question}\n{it.context}{NL}システム: ", it.choices


def _fp2_05(it: Item, w: str):
    return f"ユーザー: {it.question}\n{it.context}\nシステム: ", it.choices


def _fp2_06(it: Item, w: str):
    return f"{_SELECT['std']}\n\n質問：{it.question}\n{it.context} [/INST] ", it.choices


_MCQ: dict[str, Renderer] = {
    "default": _mcq_default,
    "1.0-0.1": _mcq_01,
    "1.0-0.1.2": _mcq_012,
    "1.0-0.2": _mcq_02,
    "1.0-0.2.1": _mcq_021,
    "1.0-0.3": _mcq_03,
    "1.0-0.4": _mcq_04,
    "1.0-0.5": _mcq_05,
    "1.0-0.6": _mcq_06,
}
_FP2: dict[str, Renderer] = {
    "default": _fp2_default,
    "1.0-0.1": _fp2_01,
    "1.0-0.1.2": _fp2_012,
    "1.0-0.2": _fp2_02,
    "1.0-0.2.1": _fp2_021,
    "1.0-0.3": _fp2_03,
    "1.0-0.4": _fp2_04,
    "1.0-0.5": _fp2_05,
    "1.0-0.6": _fp2_06,
}


def _chabsa_plain(it: Item, w: str):  # default and 0.2
    return f"センテンス: {it.question}\nターゲット: {it.context}\n回答:", it.choices


def _chabsa_01(it: Item, w: str):  # sic: "ターゲット]" without its "["
    return f"[センテンス]: {it.question}\nターゲット]: {it.context}\n[答え]:", it.choices


def _chabsa_03(it: Item, w: str):
    return f"### 入力:\nセンテンス:{it.question}\nターゲット:{it.context}\n\n### 応答:\n\n", it.choices


def _chabsa_04(it: Item, w: str):
    return f"センテンス: {it.question}{NL}ターゲット: {it.context}{NL}システム:", it.choices


def _chabsa_05(it: Item, w: str):
    return f"センテンス: {it.question}\nターゲット: {it.context}\nシステム:", it.choices


def _chabsa_06(it: Item, w: str):
    return (
        f"与えられたセンテンスにおける、{_CHABSA_ASK}\n\nセンテンス: {it.question}\nターゲット: {it.context} [/INST]",
        it.choices,
    )


_CHABSA: dict[str, Renderer] = {
    "default": _chabsa_plain,
    "1.0-0.1": _chabsa_01,
    "1.0-0.2": _chabsa_plain,
    "1.0-0.3": _chabsa_03,
    "1.0-0.4": _chabsa_04,
    "1.0-0.5": _chabsa_05,
    "1.0-0.6": _chabsa_06,
}
# layout -> (wording of the description/instruction, doc_to_text renderers by effective version)
_LAYOUT_SPECS: dict[str, tuple[str, dict[str, Renderer]]] = {
    "mcq": ("std", _MCQ),
    "cpa": ("cpa", _MCQ),
    "fp2": ("std", _FP2),
    "chabsa": ("chabsa", _CHABSA),
}


def target_delimiter(layout: str, version: str) -> str:
    """``" "`` for chabsa except at 0.3; ``""`` for every other task and version."""
    return " " if layout == "chabsa" and effective_version(layout, version) != "1.0-0.3" else ""


def description(layout: str, version: str) -> str:
    v = effective_version(layout, version)
    if layout == "chabsa":
        return _CHABSA_DESC[v]
    if layout == "fp2" and v == "default":
        return _DESC_DEFAULT["fp2"]
    return _descriptions(_LAYOUT_SPECS[layout][0])[v]


def render(item: Item, layout: str, version: str) -> Prompt:
    """The harness prompt for one item: context (description + doc_to_text) and the scored choices."""
    v = effective_version(layout, version)
    wording, renderers = _LAYOUT_SPECS[layout]
    text, scored = renderers[v](item, wording)
    return Prompt(
        context=description(layout, v) + text,
        choices=tuple(scored),
        target_delimiter=target_delimiter(layout, v),
    )


def move_whitespace(context: str, continuation: str) -> tuple[str, str]:
    """§4 step 2: the context's trailing whitespace (all that ``str.rstrip`` removes) starts the continuation."""
    kept = context.rstrip()
    return kept, context[len(kept) :] + continuation


def requests_for(prompt: Prompt) -> list[tuple[str, str]]:
    """The (context, continuation) string pairs scored for one item, one per choice, after the move."""
    return [move_whitespace(prompt.context, prompt.target_delimiter + c) for c in prompt.choices]


# ---------------------------------------------------------------------------------------------------------
# Metrics (§2)


def metric_names(layout: str) -> tuple[str, ...]:
    """The metrics reported for a task; the first is the leaderboard's."""
    return ("f1", "acc", "acc_norm") if layout == "chabsa" else ("acc", "acc_norm")


def leaderboard_metric(layout: str) -> str:
    return metric_names(layout)[0]


def chabsa_f1(golds: Sequence[int], preds: Sequence[int]) -> float:
    """The harness's chabsa aggregation: ``f1_score(golds, preds, average="macro") * 1.5``.

    Macro F1 over every label present in golds or preds. Neutral gold (-100) is a label nobody predicts,
    so its F1 is 0 and the ×1.5 turns the 3-label mean back into (F1_pos + F1_neg) / 2.
    A fraction (0-1.5 in principle, ≤ 1 in practice), like acc.
    """
    g = np.asarray(list(golds), dtype=np.int64)
    p = np.asarray(list(preds), dtype=np.int64)
    if g.shape != p.shape:
        raise ValueError(f"{len(g)} golds but {len(p)} predictions")
    if g.size == 0:
        return 0.0
    f1s = []
    for label in np.union1d(g, p):
        tp = int(np.sum((g == label) & (p == label)))
        wrong = int(np.sum((g == label) != (p == label)))  # false positives + false negatives
        f1s.append(2 * tp / (2 * tp + wrong) if tp or wrong else 0.0)
    return float(np.mean(f1s) * 1.5)


def leaderboard_average(scores: dict[str, float]) -> float:
    """make_leaderboard.py's Ave.: the mean over tasks with a non-zero score (NaN counts as no score).

    Same unit as the inputs (finmerge passes fractions; the leaderboard shows ×100); 0.0 if none scored.
    """
    vals = [float(v) for v in scores.values() if v and not math.isnan(v)]
    return float(np.mean(vals)) if vals else 0.0


def best_version(avgs: dict[str, float]) -> str:
    """The version with the best average; a tie goes to the earlier one in :data:`VERSIONS` order."""
    if not avgs:
        raise ValueError("no version averages to choose from")
    order = {v: i for i, v in enumerate(VERSIONS)}
    return min(avgs, key=lambda v: (-avgs[v], order.get(v, len(order))))
