"""Synthetic japanese-lm-fin-harness data in the harness's folder layout (fin-harness.md §1.1).

Every text is made up from the word pools below (no benchmark question is ever used), deterministic in the
seed, 20-120 characters for questions and sentences, with choices of varying lengths so prompts differ item
to item. Used by tests (``from tests.harness_fixtures import write_harness``) and bench/evaluate.py.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SUBJECTS = [
    "架空の株式会社あおば",
    "仮想商事",
    "サンプル銀行",
    "テスト証券",
    "みどり精機",
    "架空ファンド甲",
    "さくら運輸",
    "こだま電機",
    "架空の地方公共団体",
    "ひかり保険",
]
TOPICS = [
    "有価証券報告書",
    "内部統制",
    "監査計画",
    "減損損失",
    "繰延税金資産",
    "投資信託",
    "信用取引",
    "外貨預金",
    "公的年金",
    "生命保険料控除",
    "キャッシュ・フロー計算書",
    "自己株式",
    "のれん",
    "リース取引",
]
ASKS = [
    "に関する記述として最も適切なものはどれか。",
    "について正しいものはどれか。",
    "の説明のうち、誤っているものはどれか。",
    "に関して、次の記述は正しいか。",
    "の取扱いとして適切なものを選べ。",
]
FRAGMENTS = [
    "前期と比べて増加した",
    "一定の要件を満たす場合に限られる",
    "期末に見直しを行う",
    "取締役会の承認を要する",
    "原則として時価で評価する",
    "重要性が乏しい場合は省略できる",
    "翌期以降に繰り越される",
    "監査人が独立して判断する",
    "利用者の判断に影響を与える",
    "開示の対象とはならない",
    "税務上の所得から控除される",
    "手数料が別途かかる",
]
NOUNS = [
    "売上高",
    "営業利益",
    "経常利益",
    "受注高",
    "設備投資",
    "海外事業",
    "国内需要",
    "原材料価格",
    "為替相場",
    "販売費",
    "主力製品",
    "新規顧客",
]
TRENDS_POS = ["堅調に推移しました", "前年を上回りました", "大きく伸びました", "改善しました"]
TRENDS_NEG = ["低調に推移しました", "前年を下回りました", "減少しました", "悪化しました"]
TRENDS_NEU = ["横ばいとなりました", "前年並みでした", "見直しを行いました"]
KANA = ["ア", "イ", "ウ", "エ", "オ", "カ"]
FULLWIDTH = ["１", "２", "３", "４"]


def _clip(text: str, lo: int = 20, hi: int = 120) -> str:
    while len(text) < lo:
        text += "なお、詳細は別途定める。"
    return text[: hi - 1] + "。" if len(text) > hi else text


def _question(rng: random.Random) -> str:
    text = f"{rng.choice(SUBJECTS)}における{rng.choice(TOPICS)}{rng.choice(ASKS)}"
    if rng.random() < 0.4:
        text = f"{rng.choice(FRAGMENTS)}とされる点に留意して、" + text
    return _clip(text)


def _statement(rng: random.Random) -> str:
    """A choice or statement text, 4-60 characters."""
    parts = [rng.choice(TOPICS), "は", rng.choice(FRAGMENTS)]
    for _ in range(rng.randrange(3)):
        parts += ["が、", rng.choice(FRAGMENTS)]
    text = "".join(parts) + "。"
    return text[: rng.randrange(4, 61)]


def _json_item(rng: random.Random, name: str, k: int, layout: str) -> dict:
    if layout == "fp2":
        context = "\n".join(f"{d}．{_statement(rng)}" for d in FULLWIDTH)
        choices, comment = FULLWIDTH, ""
    elif layout == "ss1" and k % 3 != 2:  # two ○/× items for each four-choice one, as in the real task
        context, choices, comment = "", ["○", "×"], "解説：" + _statement(rng)
    else:
        context = "" if rng.random() < 0.5 else "資料：" + _statement(rng)
        choices, comment = [_statement(rng) for _ in range(4)], "解説：" + _statement(rng)
    return {
        "id": f"{name}-{k}",
        "question": _question(rng),
        "context": context,
        "choices": [{"id": i, "text": t} for i, t in enumerate(choices)],
        "answer": rng.randrange(len(choices)),
        "comment": comment,
    }


def write_json_task(root: str | Path, name: str, n: int, *, layout: str = "mcq", seed: int = 0) -> Path:
    """``root/name/data.json`` with ``n`` items: ``mcq`` (cma_basics), ``fp2`` or ``ss1`` (○/× and 4-choice)."""
    if layout not in ("mcq", "fp2", "ss1"):
        raise ValueError(f"unknown layout {layout!r}")
    rng = random.Random(f"json:{name}:{seed}")
    doc = {
        "data-type": "multiple-choice-question",
        "data-name": name,
        "data": [_json_item(rng, name, k, layout) for k in range(n)],
    }
    path = Path(root) / name / "data.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


CPA_HEADER = ["key", "q_no", "question", *KANA, "a_no", 1, 2, 3, 4, 5, 6, "abnormal_flg"]
CPA_README = [
    ("key", "試験回（例：R5_2）"),
    ("q_no", "問題番号"),
    ("question", "問題文"),
    ("ア～カ", "記述（オ、カは任意）"),
    ("a_no", "正答の選択肢番号（1始まり、-は正答なし）"),
    ("1～6", "選択肢（記号の組み合わせ）"),
    ("abnormal_flg", "1なら問題に不備あり"),
]


def _kana_combos(rng: random.Random, n_statements: int, k: int) -> list[str]:
    pool = sorted(
        {"".join(sorted(rng.sample(KANA[:n_statements], rng.choice((2, 2, 3))))) for _ in range(40)},
        key=lambda s: (len(s), s),
    )
    return rng.sample(pool, min(k, len(pool)))


def write_cpa_xlsx(
    path: str | Path,
    n: int,
    *,
    seed: int = 0,
    empty_sixth: int = 0,
    abnormal: int = 0,
    dash_answer: int = 0,
    empty_question: int = 0,
) -> int:
    """``CPA_AUDIT.xlsx`` with ``n`` data rows (sheets ``data`` and ``README``); returns the usable rows.

    Quirk rows are disjoint: ``abnormal`` (abnormal_flg 1), ``dash_answer`` (a_no "-"), ``empty_question``
    rows are dropped by the loader; ``empty_sixth`` usable rows have an empty 6th choice (the "nan" choice).
    """
    import openpyxl

    dropped = abnormal + dash_answer + empty_question
    if dropped + empty_sixth > n:
        raise ValueError(f"{dropped + empty_sixth} quirk rows do not fit in {n} rows")
    rng = random.Random(f"cpa:{seed}")
    order = rng.sample(range(n), n)
    kinds = {}
    for kind, count in (("abnormal", abnormal), ("dash", dash_answer), ("noq", empty_question)):
        kinds.update({order.pop(): kind for _ in range(count)})
    kinds.update({order.pop(): "sixth" for _ in range(empty_sixth)})

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "data"
    ws.append(CPA_HEADER)
    rounds = ["R5_2", "R5_1", "R4_2", "R4_1", "H25_1"]
    for r in range(n):
        kind = kinds.get(r)
        n_statements = rng.choice((4, 4, 5, 6))
        statements = [_statement(rng) for _ in range(n_statements)] + [None] * (6 - n_statements)
        choices = _kana_combos(rng, n_statements, 6)
        choices += [f"{choices[0]}{KANA[n_statements - 1]}"] * (6 - len(choices))  # pad a small pool
        if kind == "sixth":
            choices[5] = None
        a_no = "-" if kind == "dash" else rng.randrange(1, 6 if kind == "sixth" else 7)
        ws.append(
            [
                rounds[(r // 8) % len(rounds)],
                r % 8 + 1,
                None if kind == "noq" else _question(rng),
                *statements,
                a_no,
                *choices,
                1 if kind == "abnormal" else None,
            ]
        )
    readme = wb.create_sheet("README")
    readme.append(["列", "説明"])
    for row in CPA_README:
        readme.append(list(row))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wb.save(path)
    return n - dropped


def _chabsa_sentence(rng: random.Random, polarities: list[str]) -> tuple[str, list[dict]]:
    targets = rng.sample(NOUNS, len(polarities))
    clauses = []
    for target, pol in zip(targets, polarities, strict=True):
        trends = {"positive": TRENDS_POS, "negative": TRENDS_NEG, "neutral": TRENDS_NEU}[pol]
        clauses.append(f"{target}は{rng.choice(trends)}")
    lead = rng.choice(["当連結会計年度において、", "当期の", "", "一方で、", "この結果、"])
    sentence = _clip(lead + "、".join(clauses or [f"{rng.choice(SUBJECTS)}の事業環境は変化しました"]) + "。")
    opinions = []
    for target, pol in zip(targets, polarities, strict=True):
        start = sentence.find(target)
        if start < 0:  # clipped away: fall back to a short sentence that keeps every target
            return _chabsa_sentence_short(targets, polarities)
        opinions.append(
            {
                "target": target,
                "category": "company#sales",
                "polarity": pol,
                "from": start,
                "to": start + len(target),
            }
        )
    return sentence, opinions


def _chabsa_sentence_short(targets: list[str], polarities: list[str]) -> tuple[str, list[dict]]:
    sentence = _clip("、".join(f"{t}は変動しました" for t in targets) + "。")
    return sentence, [
        {
            "target": t,
            "category": "company#sales",
            "polarity": p,
            "from": sentence.find(t),
            "to": sentence.find(t) + len(t),
        }
        for t, p in zip(targets, polarities, strict=True)
    ]


def write_chabsa(
    folder: str | Path,
    n_files: int,
    *,
    seed: int = 0,
    neutral_share: float = 0.05,
    opinions: int | None = None,
) -> int:
    """``n_files`` chABSA ``e?????_ann.json`` files; returns the number of opinions (= items).

    ``opinions`` fixes the total (else 3-8 sentences of 0-3 opinions per file); ``round(total *
    neutral_share)`` of them are neutral, the rest about 58 % positive as in the real data.
    """
    rng = random.Random(f"chabsa:{seed}")
    if opinions is None:
        per_file = [
            sum(rng.choice((0, 1, 1, 2, 3)) for _ in range(rng.randrange(3, 9))) for _ in range(n_files)
        ]
    else:
        per_file = [opinions // n_files + (i < opinions % n_files) for i in range(n_files)]
    total = sum(per_file)
    neutral = set(rng.sample(range(total), round(total * neutral_share)))
    labels = [
        "neutral" if i in neutral else ("positive" if rng.random() < 0.58 else "negative")
        for i in range(total)
    ]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    used = 0
    for f, quota in enumerate(per_file):
        doc_id = f"E{(f + 1) * 7:05d}"
        sentences = []
        while quota > 0 or not sentences:
            k = 0 if rng.random() < 0.15 else min(quota, rng.choice((1, 1, 2, 3)))
            sentence, ops = _chabsa_sentence(rng, labels[used : used + k])
            used, quota = used + k, quota - k
            sentences.append({"sentence_id": len(sentences), "sentence": sentence, "opinions": ops})
        header = {
            "document_id": doc_id,
            "document_name": f"{rng.choice(SUBJECTS)}　有価証券報告書",
            "edi_id": doc_id,
            "security_code": str(9000 + f),
            "category33": "サービス業",
            "category17": "情報通信・サービスその他",
            "scale": str(rng.randrange(1, 8)),
            "doc_text": "有価証券報告書",
        }
        path = folder / f"e{(f + 1) * 7:05d}_ann.json"
        path.write_text(
            json.dumps({"header": header, "sentences": sentences}, ensure_ascii=False), encoding="utf-8"
        )
    return total


SIZES = {"cma_basics": 12, "fp2": 10, "security_sales_1": 12, "cpa_audit": 16, "chabsa": 60}


def write_harness(root: str | Path, *, seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, int]:
    """The full harness layout under ``root``: ``{cma_basics,fp2,security_sales_1}/data.json``,
    ``cpa/CPA_AUDIT.xlsx`` and ``chabsa/e*_ann.json``; returns the items each task will load.

    ``sizes``: items per task (cpa_audit: sheet rows, quirk rows included; chabsa: opinions).
    """
    n = {**SIZES, **(sizes or {})}
    root = Path(root)
    counts = {}
    for name, layout in (("cma_basics", "mcq"), ("fp2", "fp2"), ("security_sales_1", "ss1")):
        write_json_task(root, name, n[name], layout=layout, seed=seed)
        counts[name] = n[name]
    rows = n["cpa_audit"]
    # about the real file's shares: ~2.5 % dropped rows (one of each kind per 80), ~10 % "nan" 6th choices
    quirk = (rows + 72) // 80 if rows >= 8 else 0
    counts["cpa_audit"] = write_cpa_xlsx(
        root / "cpa" / "CPA_AUDIT.xlsx",
        rows,
        seed=seed,
        empty_sixth=min(max(1, rows // 10), rows - 3 * quirk),
        abnormal=quirk,
        dash_answer=quirk,
        empty_question=quirk,
    )
    n_files = max(1, round(n["chabsa"] / 30))
    counts["chabsa"] = write_chabsa(root / "chabsa", n_files, seed=seed, opinions=n["chabsa"])
    return counts
