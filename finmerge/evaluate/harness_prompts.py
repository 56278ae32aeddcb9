"""Harness prompts (fin-harness.md §3): the header strings, every layout at all nine prompt versions, and the
scored (context, continuation) pairs after the whitespace move (§4 step 2)."""

from __future__ import annotations

from collections.abc import Callable

from finmerge.evaluate.harness_tasks import LAYOUTS, VERSIONS, Item, Prompt, layout_for

# chabsa has no 0.1.2 / 0.2.1 tasks: the leaderboard uses its 0.1 / 0.2 results for those versions
_CHABSA_ALIASES = {"1.0-0.1.2": "1.0-0.1", "1.0-0.2.1": "1.0-0.2"}

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


def _filled(template: str) -> Renderer:
    """doc_to_text that fills ``{question}`` and ``{context}`` into ``template``; the choices are scored as
    they are."""

    def render(it: Item, w: str):
        return template.format(question=it.question, context=it.context), it.choices

    return render


_fp2_021 = _filled("質問:{question}\n{context}\n\n回答:")
_fp2_03 = _filled("### 入力:\n{question}\n{context}\n\n### 応答:\n")
_fp2_04 = _filled("ユーザー: {question}\n{context}" + NL + "システム: ")
_fp2_05 = _filled("ユーザー: {question}\n{context}\nシステム: ")
_fp2_06 = _filled(_SELECT["std"] + "\n\n質問：{question}\n{context} [/INST] ")


def _by_version(*renderers: Renderer) -> dict[str, Renderer]:
    """One renderer per prompt version, listed in :data:`VERSIONS` order."""
    return dict(zip(VERSIONS, renderers, strict=True))


_MCQ = _by_version(_mcq_default, _mcq_01, _mcq_012, _mcq_02, _mcq_021, _mcq_03, _mcq_04, _mcq_05, _mcq_06)
_FP2 = _by_version(_fp2_default, _fp2_01, _fp2_012, _fp2_02, _fp2_021, _fp2_03, _fp2_04, _fp2_05, _fp2_06)

_chabsa_plain = _filled("センテンス: {question}\nターゲット: {context}\n回答:")  # default and 0.2
# sic: "ターゲット]" without its "["
_chabsa_01 = _filled("[センテンス]: {question}\nターゲット]: {context}\n[答え]:")
_chabsa_03 = _filled("### 入力:\nセンテンス:{question}\nターゲット:{context}\n\n### 応答:\n\n")
_chabsa_04 = _filled("センテンス: {question}" + NL + "ターゲット: {context}" + NL + "システム:")
_chabsa_05 = _filled("センテンス: {question}\nターゲット: {context}\nシステム:")
_chabsa_06 = _filled(
    f"与えられたセンテンスにおける、{_CHABSA_ASK}\n\n"
    + "センテンス: {question}\nターゲット: {context} [/INST]"
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
