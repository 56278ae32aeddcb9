"""japanese-lm-fin-harness compatible task loading and prompt rendering (no model code here).

The harness scores every task as 0-shot log-likelihood multiple choice. A *task folder* holds ``data.json``
in the harness JSON layout (cma_basics / fp2 / security_sales_1; finmerge's demo task ``demo_fin`` uses
the cma_basics layout)::

    {"data-type": "multiple-choice-question", "data-name": <task>,
     "data": [{"id", "question", "context", "choices": [{"id", "text"}], "answer": <0-based>, "comment"}]}

Prompts follow /work/shared/reference/fin-harness.md §3.1 (cma-style layout, with cpa_audit's wording
as a variant) and §3.2 (fp2) for all nine prompt versions. Context = description + doc_to_text; the
scored continuation is ``target_delimiter + choice`` (the delimiter is ``""`` for every task here), and
the context's trailing whitespace is moved to the continuation by :func:`requests_for` (§4 step 2).
The ``comment`` field (rationale / answer) is never read into a prompt.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field

from finmerge import storage

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
LAYOUTS = ("mcq", "cpa", "fp2")  # mcq: cma_basics / security_sales_1 / demo_fin; cpa: cpa_audit wording

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


# ---------------------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Item:
    id: str
    question: str
    context: str
    choices: tuple[str, ...]
    gold: int


@dataclass
class Task:
    name: str  # bare harness task name (folder name), e.g. "cma_basics"
    layout: str  # one of LAYOUTS
    items: list[Item]
    source: str = ""  # URI of data.json


@dataclass(frozen=True)
class Prompt:
    context: str  # description + doc_to_text, before the whitespace move
    choices: tuple[str, ...]  # doc_to_choice: the scored strings, without the delimiter
    target_delimiter: str = ""


@dataclass
class Discovery:
    tasks: list[Task] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # task (or folder URI) -> reason


class TaskDataError(ValueError):
    pass


def layout_for(task_name: str, data_name: str | None = None) -> str:
    name = (data_name or task_name or "").lower()
    if name.startswith("fp2") or task_name.lower().startswith("fp2"):
        return "fp2"
    if name.startswith("cpa") or task_name.lower().startswith("cpa"):
        return "cpa"
    return "mcq"


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
    return Task(name=name, layout=layout_for(name, doc.get("data-name")), items=items, source=source)


def _list_subfolders(uri: str) -> list[str]:
    fs, root = storage.filesystem(uri)
    names = []
    for entry in fs.ls(root, detail=True):
        if entry.get("type") == "directory":
            names.append(posixpath.basename(str(entry["name"]).rstrip("/")))
    return sorted(n for n in names if n and not n.startswith((".", "_")))


def discover_tasks(harness_dirs: list[str], only: list[str] | None = None) -> Discovery:
    """Load every ``<task>/data.json`` under each folder; a problem skips the task with a reason.

    A folder that itself holds ``data.json`` is taken as one task (named after the folder). ``only``
    restricts to these task names; a requested task found nowhere is reported as skipped.
    """
    out = Discovery()
    seen: set[str] = set()
    for hdir in harness_dirs:
        hdir = str(hdir).rstrip("/")
        try:
            if not storage.exists(hdir):
                out.skipped[hdir] = "harness folder not found"
                continue
            if storage.exists(storage.join(hdir, "data.json")):
                candidates = [(posixpath.basename(hdir), hdir)]
            else:
                candidates = [(name, storage.join(hdir, name)) for name in _list_subfolders(hdir)]
        except Exception as exc:  # unreachable bucket, permissions, not a folder ...
            out.skipped[hdir] = f"cannot list harness folder: {type(exc).__name__}: {exc}"
            continue
        for name, tdir in candidates:
            if only is not None and name not in only:
                continue
            if name in seen:
                out.skipped[f"{name}@{tdir}"] = "duplicate task name (already loaded from an earlier folder)"
                continue
            data_uri = storage.join(tdir, "data.json")
            try:
                if not storage.exists(data_uri):
                    others = ", ".join(_files_in(tdir)[:5]) or "empty folder"
                    out.skipped[name] = f"no data.json in task folder ({others})"
                    continue
                task = parse_task(name, storage.read_json(data_uri), source=data_uri)
            except (storage.StorageError, TaskDataError, UnicodeDecodeError, OSError) as exc:
                out.skipped[name] = f"unreadable data.json: {exc}"
                continue
            seen.add(name)
            out.tasks.append(task)
    for name in only or []:
        if name not in seen and name not in out.skipped:
            out.skipped[name] = "task folder not found in harness_dirs"
    return out


def _files_in(uri: str) -> list[str]:
    try:
        fs, root = storage.filesystem(uri)
        return sorted(posixpath.basename(str(p).rstrip("/")) for p in fs.ls(root, detail=False))
    except Exception:
        return []


# ---------------------------------------------------------------------------------------------------------
# Prompt rendering


def normalize_version(version: str) -> str:
    v = str(version).strip()
    if v != "default" and not v.startswith("1.0-"):
        v = f"1.0-{v}"
    if v not in VERSIONS:
        raise ValueError(f"unknown prompt version {version!r}; known: {', '.join(VERSIONS)}")
    return v


def harness_task_name(task: str, version: str) -> str:
    """The harness's registered task name: bare for ``default``, else ``<task>-1.0-<ver>``."""
    v = normalize_version(version)
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
# layout -> (wording of the description/instruction, doc_to_text renderers, target_delimiter)
_LAYOUT_SPECS: dict[str, tuple[str, dict[str, Renderer], str]] = {
    "mcq": ("std", _MCQ, ""),
    "cpa": ("cpa", _MCQ, ""),
    "fp2": ("std", _FP2, ""),
}


def description(layout: str, version: str) -> str:
    v = normalize_version(version)
    if layout == "fp2" and v == "default":
        return _DESC_DEFAULT["fp2"]
    return _descriptions(_LAYOUT_SPECS[layout][0])[v]


def render(item: Item, layout: str, version: str) -> Prompt:
    """The harness prompt for one item: context (description + doc_to_text) and the scored choices."""
    v = normalize_version(version)
    if layout not in _LAYOUT_SPECS:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    wording, renderers, delimiter = _LAYOUT_SPECS[layout]
    text, scored = renderers[v](item, wording)
    return Prompt(context=description(layout, v) + text, choices=tuple(scored), target_delimiter=delimiter)


def move_whitespace(context: str, continuation: str) -> tuple[str, str]:
    """§4 step 2: the context's trailing whitespace (all that ``str.rstrip`` removes) starts the continuation."""
    kept = context.rstrip()
    return kept, context[len(kept) :] + continuation


def requests_for(prompt: Prompt) -> list[tuple[str, str]]:
    """The (context, continuation) string pairs scored for one item, one per choice, after the move."""
    return [move_whitespace(prompt.context, prompt.target_delimiter + c) for c in prompt.choices]
