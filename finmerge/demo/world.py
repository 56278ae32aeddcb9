"""The embedded demo world: fictional listed companies, their 有価証券報告書 and everything the demo trains on.

``generate_world(cfg, out_dir)`` writes, deterministically from ``cfg.seed`` (same config ⇒ byte-identical
files; no global random state, nothing downloaded)::

    filings/html/<doc_id>.html        raw filings as EDINET-viewer-like HTML pages
    filings/text/<doc_id>.txt         raw filings as plain text with repeated page headers / footers
    filings/jsonl/part-000.jsonl      raw filings, one record per section
    eval/heldout.jsonl                the companies' held-out-year filings, clean narrative sections
    eval/harness/demo_fin/data.json   multiple-choice questions (japanese-lm-fin-harness format)
    eval/chat_finance.jsonl           chat questions with accepted answers
    general/corpus.jsonl              general Japanese corpus (towns, everyday topics), no company names
    instructions/train.jsonl          general instruction pairs, every answer starts with 回答：
    truth.json                        what the dirt is (duplicates, junk, non-Japanese) and counts
    world.json                        the company (and town) facts

Facts are made learnable by a tiny LM: each categorical fact is stated in the fixed pattern
``<会社名>の<属性>は<値>です。`` in several sections of every filing, between varied narrative sentences.
Filings of one company differ from year to year (sentence variants, numbers), so the only near duplicates
of the corpus are the ones listed in ``truth.json``.
"""

from __future__ import annotations

import html
import json
import random
import re
import unicodedata
from pathlib import Path

from finmerge.config import DemoConfig
from finmerge.demo import general
from finmerge.demo import vocab as V

SECTIONS = [
    "表紙",
    "主要な経営指標等の推移",
    "沿革",
    "事業の内容",
    "従業員の状況",
    "経営方針、経営環境及び対処すべき課題等",
    "事業等のリスク",
    "経営者による財政状態、経営成績及びキャッシュ・フローの状況の分析",
]
NARRATIVE_SECTIONS = SECTIONS[2:]
FORMS = ["html", "jsonl", "text"]  # also the order in which a sorted folder walk meets them
FW_DIGITS = "０１２３４５６７８９"

# Amended filings are near duplicates: char-5-gram Jaccard of each cleaned narrative section in this band.
NEAR_JACCARD = (0.88, 0.95)
SHINGLE = 5
LINES_PER_PAGE = (16, 21)


def _pick(rng: random.Random, items):
    return items[rng.randrange(len(items))]


def _sub(seed: int, *key) -> random.Random:
    """An independent, reproducible stream per purpose (string seeds are hashed with SHA-512)."""
    return random.Random("/".join([str(seed), *map(str, key)]))


def _jp_num(n: int) -> str:
    return f"{n:,}"


def _pct(new: float, old: float) -> tuple[str, str]:
    change = (new - old) / abs(old) * 100 if old else 0.0
    return f"{abs(change):.1f}", "増" if change >= 0 else "減"


# --------------------------------------------------------------------------------------------------------------
# Companies


def _person(rng: random.Random) -> str:
    return f"{_pick(rng, V.SURNAMES)}　{_pick(rng, V.GIVEN_NAMES)}"


def make_companies(cfg: DemoConfig) -> list[dict]:
    rng = _sub(cfg.seed, "companies")
    n = cfg.n_companies
    if n > len(V.COMPANY_PREFIXES) * len(V.INDUSTRIES):
        raise ValueError(
            f"n_companies={n} exceeds the {len(V.COMPANY_PREFIXES) * len(V.INDUSTRIES)} names available"
        )
    prefixes = list(V.COMPANY_PREFIXES)
    rng.shuffle(prefixes)
    edinet = rng.sample(range(1000, 10000), n)
    sec = rng.sample(range(130, 999), n)
    first = min(cfg.years + [cfg.heldout_year]) - 4
    last = max(cfg.years + [cfg.heldout_year]) + 1
    used: set[str] = set()
    companies = []
    for i in range(n):
        ind = V.INDUSTRIES[i % len(V.INDUSTRIES)] if i < len(V.INDUSTRIES) else _pick(rng, V.INDUSTRIES)
        j = i
        while True:  # unique prefix while the pool lasts, then unique (prefix, industry)
            prefix, roma = prefixes[j % len(prefixes)]
            name = f"株式会社{prefix}{ind['suffix']}"
            if name not in used and (i >= len(prefixes) or j < len(prefixes)):
                break
            j += 1
            if j > i + len(prefixes) * len(V.INDUSTRIES):
                ind = _pick(rng, V.INDUSTRIES)
        used.add(name)
        place = _pick(rng, V.PLACES)
        other_places = [p["hq"] for p in V.PLACES if p["hq"] != place["hq"]]
        products = rng.sample(ind["products"], 2)
        risks = rng.sample(ind["risks"], 2)
        founded = rng.randint(1920, 1995)
        # Financial series: revenue in 百万円 with persistent growth, an operating margin drifting slowly.
        revenue = 10 ** rng.uniform(3.9, 5.6)
        trend = rng.uniform(-0.02, 0.07)
        margin = rng.uniform(0.03, 0.14)
        per_employee = rng.uniform(25, 70)
        fin = {}
        for y in range(first, last + 1):
            revenue *= 1 + trend + rng.uniform(-0.04, 0.04)
            margin = min(0.2, max(0.01, margin + rng.uniform(-0.012, 0.012)))
            employees = int(revenue / per_employee * rng.uniform(0.97, 1.03))
            assets = revenue * rng.uniform(0.9, 1.5)
            fin[str(y)] = {
                "revenue": int(revenue),
                "operating_income": int(revenue * margin),
                "employees": max(employees, 40),
                "total_assets": int(assets),
            }
        area = place["area"]
        phone = f"{area}-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}"
        domain = f"{roma}-{ind['suffix_en']}.example.jp"
        companies.append(
            {
                "edinet_code": f"E0{edinet[i]:04d}",
                "sec_code": f"{sec[i] * 10 + rng.randint(0, 9)}",
                "name": name,
                "prefix": prefix,
                "name_en": f"{roma.upper()} {ind['suffix_en'].upper()} CO., LTD.",
                "industry": ind["key"],
                "business": ind["business"],
                "products": products,
                "hq": place["hq"],
                "address": place["hq"] + place["street"].format(n=rng.randint(1, 30), m=rng.randint(1, 20)),
                "founded": founded,
                "representative": _person(rng),
                "contact_person": _person(rng),
                "phone": phone,
                "email": f"{_pick(rng, ['ir', 'info', 'kessan', 'soumu'])}@{domain}",
                "risks": risks,
                "motto": _pick(rng, V.MOTTOS),
                "segments": list(ind["segments"]),
                "customers": ind["customers"],
                "subsidiaries": rng.randint(2, 24),
                "second_site": {"place": _pick(rng, other_places), "facility": _pick(rng, V.FACILITIES)},
                "overseas": _pick(rng, V.OVERSEAS),
                "listed": rng.randint(max(founded + 5, 1950), 2005),
                "financials": fin,
                "style": {
                    "fw_alnum": _pick(rng, [0.0, 0.0, 0.3, 0.8]),
                    "fw_punct": rng.random() < 0.3,
                    "hw_kana": _pick(rng, [0.0, 0.0, 0.4]),
                    "jsonl_br": rng.random() < 0.3,
                },
            }
        )
    return companies


def fact_sentences(c: dict) -> dict[str, str]:
    """Attribute → the fixed fact sentence used in the filings."""
    n = c["name"]
    return {
        "主な事業": f"{n}の主な事業は{c['business']}です。",
        "本社所在地": f"{n}の本社所在地は{c['hq']}です。",
        "主な製品": f"{n}の主な製品は{c['products'][0]}と{c['products'][1]}です。",
        "主な事業等のリスク": f"{n}の主な事業等のリスクは{c['risks'][0]}と{c['risks'][1]}です。",
        "設立年": f"{n}の設立年は{c['founded']}年です。",
    }


# --------------------------------------------------------------------------------------------------------------
# Filing content (canonical: clean Japanese; dirt is added when rendering)

MACRO = [
    "社会経済活動の正常化が進み、緩やかな回復基調で推移しました",
    "物価の上昇や金融資本市場の変動など、先行き不透明な状況が続きました",
    "雇用や所得環境の改善により、景気は持ち直しの動きが見られました",
    "海外経済の減速や為替の大きな変動により、不安定な状況で推移しました",
    "人手不足やエネルギー価格の高止まりが続き、企業の収益環境は厳しさを増しました",
]
MEASURES = [
    "調達先の分散",
    "社内規程の整備",
    "専門部署の設置",
    "定期的な点検と訓練",
    "取引条件の見直し",
    "長期契約の締結",
    "保険への加入",
    "情報の収集と分析",
    "事業継続計画の策定",
    "外部専門家との連携",
]
AMEND_SENTENCES = [
    "なお、前回提出した報告書の記載内容の一部を訂正しております。",
    "上記の数値は、監査法人による確認を経て訂正したものであります。",
    "当該箇所の記載に誤りがあったため、訂正を行いました。",
    "訂正箇所以外の記載内容に変更はありません。",
]


def _period(c: dict, year: int) -> int:
    return year - c["founded"] + 1


def _history(c: dict, year: int, rng: random.Random) -> list[str]:
    n, hq = c["name"], c["hq"]
    f = c["founded"]
    site = c["second_site"]
    events = [
        (
            f,
            4,
            [
                f"{f}年4月、{hq}において{n}を設立しました。",
                f"{f}年4月、{hq}で{n}の前身となる事業を開始し、同年に会社を設立しました。",
                f"{f}年4月、{n}を{hq}に設立し、事業を始めました。",
            ],
        ),
        (
            f + 3,
            10,
            [
                f"{f + 3}年10月、{c['products'][0]}の取り扱いを開始しました。",
                f"{f + 3}年10月、主力となる{c['products'][0]}の事業に参入しました。",
                f"{f + 3}年10月、{c['products'][0]}の生産と販売を本格化しました。",
            ],
        ),
        (
            c["listed"],
            9,
            [
                f"{c['listed']}年9月、東京証券取引所に株式を上場しました。",
                f"{c['listed']}年9月、当社株式を東京証券取引所に上場しました。",
                f"{c['listed']}年9月、株式を公開し、東京証券取引所への上場を果たしました。",
            ],
        ),
        (
            max(c["listed"] + 2, f + 8),
            6,
            [
                f"{max(c['listed'] + 2, f + 8)}年6月、{site['place']}に{site['facility']}を開設しました。",
                f"{max(c['listed'] + 2, f + 8)}年6月、{site['facility']}を{site['place']}に新設しました。",
                f"{max(c['listed'] + 2, f + 8)}年6月、事業拡大に備えて{site['place']}に{site['facility']}を設けました。",
            ],
        ),
        (
            max(c["listed"] + 6, 2000),
            1,
            [
                f"{max(c['listed'] + 6, 2000)}年1月、{c['overseas']}に海外子会社を設立しました。",
                f"{max(c['listed'] + 6, 2000)}年1月、{c['overseas']}で現地法人の営業を開始しました。",
                f"{max(c['listed'] + 6, 2000)}年1月、海外展開の拠点として{c['overseas']}に子会社を置きました。",
            ],
        ),
        (
            max(c["listed"] + 9, 2008),
            7,
            [
                f"{max(c['listed'] + 9, 2008)}年7月、{c['products'][1]}の事業を本格的に開始しました。",
                f"{max(c['listed'] + 9, 2008)}年7月、{c['products'][1]}を新たな柱として事業化しました。",
                f"{max(c['listed'] + 9, 2008)}年7月、{c['products'][1]}の分野に進出しました。",
            ],
        ),
        (
            2022,
            4,
            [
                "2022年4月、東京証券取引所の市場区分の見直しにより、プライム市場に移行しました。",
                "2022年4月、市場区分の再編に伴い、東京証券取引所プライム市場へ移行しました。",
                "2022年4月、東京証券取引所プライム市場に上場区分を変更しました。",
            ],
        ),
    ]
    lines = [
        _pick(
            rng,
            [
                f"{n}は{f}年の創業以来、{c['business']}を中心に事業を広げてまいりました。主な変遷は次のとおりであります。",
                f"当社の沿革は以下のとおりです。{n}は{f}年に設立され、{c['business']}を通じて成長してまいりました。",
                f"{f}年の設立から現在に至るまでの主な歩みを記載しております。当社は長く{c['business']}に取り組んでおります。",
                f"設立以後の企業集団に係る主な変遷は次のとおりです。{n}は{hq}を拠点に事業を営んでおります。",
            ],
        )
    ]
    recent = _pick(
        rng,
        [
            (11, f"{year - 1}年11月、{_pick(rng, V.PLACES)['hq']}に営業所を新設しました。"),
            (8, f"{year - 1}年8月、{c['products'][0]}の供給体制を強化するため設備を増強しました。"),
            (12, f"{year - 1}年12月、{c['products'][1]}の研究拠点を拡充しました。"),
            (10, f"{year - 1}年10月、グループ会社の再編を行いました。"),
        ],
    )
    events.append((year - 1, recent[0], [recent[1]]))
    for y, m, variants in sorted(events, key=lambda e: (e[0], e[1])):
        if (y, m) < (year, 6):
            lines.append(_pick(rng, variants))
    facts = fact_sentences(c)
    lines.append(
        facts["本社所在地"]
        + facts["設立年"]
        + _pick(
            rng,
            [
                "今後も歴史に学びながら事業を進めてまいります。",
                "創業の精神は現在も受け継がれております。",
                "これからも地域とともに歩んでまいります。",
            ],
        )
    )
    return lines


def _business(c: dict, year: int, rng: random.Random) -> list[str]:
    n = c["name"]
    p1, p2 = c["products"]
    s1, s2 = c["segments"]
    facts = fact_sentences(c)
    site = c["second_site"]
    subs = c["subsidiaries"] + (year - 2020) // 2
    share = rng.randint(52, 78)
    paras = [
        _pick(
            rng,
            [
                f"{year}年3月31日現在、当社グループは、{n}及び子会社{subs}社で構成されており、{c['business']}を主な事業として営んでおります。",
                f"当社グループは、当社と連結子会社{subs}社（{year}年3月31日現在）により構成され、{c['business']}を中心に事業活動を展開しております。",
                f"{n}のグループは、当事業年度末において子会社{subs}社を含む企業集団であり、{c['business']}に関する事業を行っております。",
            ],
        ),
        facts["主な事業"]
        + facts["主な製品"]
        + _pick(
            rng,
            [
                f"これらの製品は主に{c['customers']}に販売しております。",
                f"主な販売先は{c['customers']}であります。",
                f"当社の製品は{c['customers']}を中心に幅広く利用されております。",
                f"{c['customers']}との長期的な取引関係が当社の強みであります。",
            ],
        ),
        _pick(
            rng,
            [
                f"当社グループの報告セグメントは「{s1}」と「{s2}」の二つであります。「{s1}」では主に{p1}を、「{s2}」では主に{p2}を取り扱っております。",
                f"事業は「{s1}」及び「{s2}」の二つのセグメントに区分しております。{p1}は「{s1}」に、{p2}は「{s2}」に含まれます。",
                f"セグメントは「{s1}」と「{s2}」から構成されております。{p1}と{p2}がそれぞれの中核となっております。",
            ],
        )
        + _pick(
            rng,
            [
                f"当事業年度の売上高に占める「{s1}」の割合は約{share}%でした。",
                f"「{s1}」が売上高の約{share}%を占め、残りを「{s2}」が占めております。",
                f"売上高の構成は、「{s1}」が約{share}%、「{s2}」が約{100 - share}%となっております。",
            ],
        ),
        _pick(
            rng,
            [
                f"{p1}については、品質の高さと納期の正確さが評価され、長年にわたり安定した取引を続けております。",
                f"{p1}は当社の売上の大きな部分を占めており、改良を重ねながら提供しております。",
                f"{p1}の分野では、顧客の要望にきめ細かく応える体制を整えております。",
                f"近年は{p2}への需要が高まっており、生産と販売の体制を強化しております。",
                f"{p2}については、新たな顧客層の開拓を進めております。",
            ],
        )
        + _pick(
            rng,
            [
                f"当事業年度には{p1}の新しい型式を{rng.randint(2, 9)}種類発売しました。",
                f"{year - 1}年度下期には{p2}の受注が前年を上回りました。",
                f"当事業年度の研究開発費は{_jp_num(rng.randint(80, 4000))}百万円でした。",
                f"当事業年度末の{p2}の受注残高は{_jp_num(rng.randint(300, 9000))}百万円となっております。",
            ],
        ),
        facts["本社所在地"]
        + _pick(
            rng,
            [
                f"本社のほか、{site['place']}に{site['facility']}を置いております。",
                f"{site['place']}には{site['facility']}があり、重要な拠点となっております。",
                f"また、{c['overseas']}の子会社が海外での販売を担っております。",
            ],
        ),
    ]
    return paras


def _employees(c: dict, year: int, rng: random.Random) -> list[str]:
    n = c["name"]
    emp = c["financials"][str(year)]["employees"]
    s1, s2 = c["segments"]
    share = rng.uniform(0.45, 0.7)
    e1 = int(emp * share)
    e3 = max(5, int(emp * rng.uniform(0.04, 0.1)))
    e2 = emp - e1 - e3
    age = rng.uniform(36, 46)
    tenure = rng.uniform(8, 20)
    salary = rng.randint(4800, 9200)
    paras = [
        "(1) 提出会社の状況",
        _pick(
            rng,
            [
                f"{year}年3月31日現在、{n}の従業員数は{_jp_num(emp)}名です。平均年齢は{age:.1f}歳、平均勤続年数は{tenure:.1f}年、平均年間給与は{_jp_num(salary)}千円であります。",
                f"{n}の従業員数は{year}年3月31日現在で{_jp_num(emp)}名となっております。従業員の平均年齢は{age:.1f}歳、平均勤続年数は{tenure:.1f}年です。平均年間給与は{_jp_num(salary)}千円でした。",
                f"当事業年度末の{n}の従業員数は{_jp_num(emp)}名であり、平均年齢{age:.1f}歳、平均勤続年数{tenure:.1f}年、平均年間給与{_jp_num(salary)}千円となっております。",
            ],
        ),
        _pick(
            rng,
            [
                f"セグメント別では、「{s1}」に{_jp_num(e1)}名、「{s2}」に{_jp_num(e2)}名、全社共通部門に{_jp_num(e3)}名が所属しております。",
                f"従業員のうち{_jp_num(e1)}名が「{s1}」、{_jp_num(e2)}名が「{s2}」に従事し、管理部門には{_jp_num(e3)}名が在籍しております。",
            ],
        ),
        "(2) 労働組合の状況",
        _pick(
            rng,
            [
                "労働組合は結成されておりませんが、労使関係は円満に推移しております。",
                f"当社の労働組合は{c['prefix']}労働組合と称し、労使関係は安定しております。",
                "労働組合との間に特記すべき事項はなく、労使関係は良好であります。",
                "当社には労働組合があり、定期的な協議を通じて良好な関係を保っております。",
            ],
        ),
        _pick(
            rng,
            [
                f"管理職に占める女性労働者の割合は{rng.uniform(2, 18):.1f}%、男性労働者の育児休業取得率は{rng.uniform(10, 85):.1f}%であります。",
                f"女性管理職の比率は{rng.uniform(2, 18):.1f}%となり、男性の育児休業取得率は{rng.uniform(10, 85):.1f}%に上昇しました。",
            ],
        )
        + fact_sentences(c)["本社所在地"]
        + _pick(
            rng,
            [
                f"本社には従業員の約{int(share * 60)}%が勤務しております。",
                "本社では働きやすい職場づくりに取り組んでおります。",
                "人材の育成を経営の重要課題と位置づけております。",
            ],
        ),
    ]
    return paras


def _policy(c: dict, year: int, rng: random.Random) -> list[str]:
    n = c["name"]
    p1, p2 = c["products"]
    r1, r2 = c["risks"]
    facts = fact_sentences(c)
    fin = c["financials"]
    target_year = year + rng.randint(2, 3)
    target = fin.get(str(target_year), fin[str(year)])["revenue"] * rng.uniform(1.02, 1.1)
    paras = [
        "(1) 経営方針",
        _pick(
            rng,
            [
                f"{n}は「{c['motto']}」を経営理念に掲げ、持続的な成長と企業価値の向上をめざしております。",
                f"当社は「{c['motto']}」という理念のもと、すべての関係者から信頼される企業であり続けることを基本方針としております。",
                f"「{c['motto']}」を経営の基本とし、健全で透明性の高い経営に努めております。",
            ],
        )
        + facts["主な事業"],
        "(2) 中期経営計画",
        _pick(
            rng,
            [
                f"当社は{target_year}年度を最終年度とする中期経営計画において、売上高{_jp_num(int(target))}百万円、営業利益率{rng.uniform(5, 15):.1f}%を目標としております。",
                f"{target_year}年度を最終年度とする中期経営計画では、売上高{_jp_num(int(target))}百万円の達成と、自己資本利益率{rng.uniform(6, 12):.1f}%以上を目標に掲げております。",
            ],
        )
        + _pick(
            rng,
            [
                f"{p1}と{p2}を成長の柱と位置づけ、経営資源を重点的に配分してまいります。",
                "また、M&Aを含む成長投資にも積極的に取り組んでまいります。",
                "R&Dへの投資を拡大し、新しい製品の開発を急いでおります。",
            ],
        ),
        "(3) 経営環境及び対処すべき課題",
        _pick(
            rng,
            [
                f"今後の経営環境につきましては、{_pick(rng, MACRO)}ことから、引き続き注意が必要であります。",
                f"当社を取り巻く環境は、{r1}や{r2}など多くの不確実性を抱えております。",
                f"市場では{p1}に対する需要の変化が続いており、柔軟な対応が求められております。",
            ],
        )
        + facts["主な事業等のリスク"]
        + _pick(
            rng,
            [
                f"第一に{r1}への対応として{_pick(rng, MEASURES)}を進め、第二に{r2}に備えて{_pick(rng, MEASURES)}に取り組んでおります。",
                f"これらに対しては、{_pick(rng, MEASURES)}と{_pick(rng, MEASURES)}を柱とする対策を講じてまいります。",
            ],
        ),
        facts["主な製品"]
        + _pick(
            rng,
            [
                "品質の向上と原価の低減を両立させ、収益力を高めてまいります。",
                "顧客との対話を重ね、製品の付加価値を高めてまいります。",
                "デジタル技術を活用し、業務の効率化を進めてまいります。",
            ],
        ),
        _pick(
            rng,
            [
                f"なお、本報告書に関するお問い合わせは、IR担当（電話 {c['phone']}、電子メール {c['email']}）までお寄せください。",
                f"株主・投資家の皆様からのお問い合わせは、電話 {c['phone']} または電子メール {c['email']} にて承っております。",
            ],
        ),
    ]
    return paras


def _risks(c: dict, year: int, rng: random.Random) -> list[str]:
    n = c["name"]
    p1, p2 = c["products"]
    facts = fact_sentences(c)
    paras = [
        _pick(
            rng,
            [
                f"投資者の判断に重要な影響を及ぼす可能性のある事項には、以下のようなものがあります。文中の将来に関する事項は、{year}年3月31日現在において当社グループが判断したものであります。",
                f"当社グループの経営成績及び財政状態に影響を及ぼす可能性のある主なリスクは、以下のとおりであります。将来に関する記載は{year}年3月31日現在の判断によるものです。",
                f"{n}の事業に関するリスクのうち、主要なものを以下に記載しております。これらはすべてのリスクを網羅するものではありません。",
                f"{year}年3月期の有価証券報告書の提出日現在において、{n}が認識している主なリスクは次のとおりです。",
                "当社は、リスクの顕在化を防ぐとともに、発生した場合の影響を最小限にとどめるよう努めております。主なリスクは以下のとおりです。",
            ],
        ),
        facts["主な事業等のリスク"]
        + _pick(
            rng,
            [
                "これらのリスクについては、リスク管理委員会で定期的に評価しております。",
                f"{n}はこれらのリスクの発生可能性を認識したうえで、その回避に努めております。",
                "以下では、それぞれのリスクの内容と対応策を説明いたします。",
                f"当事業年度はリスク管理委員会を{rng.randint(4, 12)}回開催しました。",
            ],
        ),
    ]
    for k, risk in enumerate(c["risks"], start=1):
        pool = [
            f"{risk}が想定を超えて進んだ場合、{n}の業績及び財政状態に影響を及ぼす可能性があります。",
            f"当社グループは{risk}に備えるため、{_pick(rng, MEASURES)}を進めております。",
            f"特に{p1}の分野では、{risk}による影響が大きくなる傾向があります。",
            f"{p2}の事業においても、{risk}への注意が欠かせません。",
            f"{risk}については、取締役会においても年{rng.randint(2, 6)}回程度議論しております。",
            f"過去には{risk}により{rng.randint(3, 25)}%程度の減益となった年度もあります。",
            f"{risk}の影響を小さくするため、{_pick(rng, MEASURES)}と{_pick(rng, MEASURES)}に取り組んでおります。",
            f"{risk}の動向は予測が難しく、当社の努力だけでは避けられない面があります。",
            f"{year - 1}年度には{risk}に関連して{_jp_num(rng.randint(20, 900))}百万円の費用が発生しました。",
            f"{c['customers']}の動向によっては、{risk}の影響が拡大するおそれがあります。",
        ]
        paras.append(f"({k}) {risk}")
        paras.append("".join(rng.sample(pool, 3)))
    paras.append(f"({len(c['risks']) + 1}) その他のリスク")
    paras.append(
        _pick(
            rng,
            [
                "このほか、情報システムの障害、訴訟、感染症の流行などが当社グループの業績に影響を及ぼす可能性があります。",
                "上記以外にも、予期しない事故や取引先の経営状況の変化が業績に影響を与える可能性があります。",
                "これら以外のリスクについても、発生の可能性を認識したうえで適切に対応してまいります。",
                f"このほか、{c['overseas']}における政治や経済の変化も、海外事業に影響を与える可能性があります。",
            ],
        )
    )
    return paras


def _mdna(c: dict, year: int, rng: random.Random) -> list[str]:
    n = c["name"]
    p1, p2 = c["products"]
    fin, prev = c["financials"][str(year)], c["financials"][str(year - 1)]
    nxt = c["financials"].get(str(year + 1), fin)
    rev, op = fin["revenue"], fin["operating_income"]
    g, gd = _pct(rev, prev["revenue"])
    go, god = _pct(op, prev["operating_income"])
    facts = fact_sentences(c)
    d_assets = fin["total_assets"] - prev["total_assets"]
    ocf = int(op * rng.uniform(0.8, 1.4))
    icf = int(rev * rng.uniform(0.02, 0.08))
    fcf = int(op * rng.uniform(0.1, 0.5))
    paras = [
        "(1) 経営成績の状況",
        f"当事業年度におけるわが国経済は、{_pick(rng, MACRO)}。"
        + _pick(
            rng,
            [
                f"このような状況のもと、{n}の売上高は{_jp_num(rev)}百万円（前期比{g}%{gd}）、営業利益は{_jp_num(op)}百万円（同{go}%{god}）となりました。",
                f"この結果、当事業年度の{n}の売上高は{_jp_num(rev)}百万円となり、前期に比べ{g}%の{gd}収となりました。営業利益は{_jp_num(op)}百万円（前期比{go}%{god}）であります。",
                f"{n}の当事業年度の業績は、売上高{_jp_num(rev)}百万円（前期比{g}%{gd}）、営業利益{_jp_num(op)}百万円（前期比{go}%{god}）となりました。",
            ],
        ),
        facts["主な事業"]
        + _pick(
            rng,
            [
                f"{p1}の販売が堅調に推移したほか、{p2}も前期を上回りました。",
                f"{p1}は需要の回復を受けて好調でしたが、{p2}は伸び悩みました。",
                f"{p2}の販売が大きく伸び、{p1}の減少を補いました。",
                f"{p1}と{p2}のいずれも、価格改定の効果により増収となりました。",
            ],
        ),
        "(2) 財政状態の状況",
        f"当事業年度末の総資産は{_jp_num(fin['total_assets'])}百万円となり、前事業年度末に比べ{_jp_num(abs(d_assets))}百万円{'増加' if d_assets >= 0 else '減少'}しました。"
        + _pick(
            rng,
            [
                "主な要因は、売上債権と棚卸資産の増加であります。",
                "これは主に、設備投資に伴う有形固定資産の増加によるものです。",
                "主として現金及び預金の変動によるものであります。",
            ],
        ),
        "(3) キャッシュ・フローの状況",
        _pick(
            rng,
            [
                f"営業活動によるキャッシュ・フローは{_jp_num(ocf)}百万円の収入、投資活動によるキャッシュ・フローは{_jp_num(icf)}百万円の支出、財務活動によるキャッシュ・フローは{_jp_num(fcf)}百万円の支出となりました。",
                f"当事業年度のキャッシュ・フローは、営業活動で{_jp_num(ocf)}百万円を得る一方、投資活動に{_jp_num(icf)}百万円、財務活動に{_jp_num(fcf)}百万円を使用しました。",
            ],
        ),
        facts["主な製品"]
        + _pick(
            rng,
            [
                f"次期の見通しにつきましては、売上高{_jp_num(int(nxt['revenue'] * 1.01))}百万円、営業利益{_jp_num(int(nxt['operating_income'] * 1.02))}百万円を見込んでおります。",
                f"次期は売上高{_jp_num(int(nxt['revenue'] * 0.99))}百万円を計画しており、引き続き収益性の改善に取り組んでまいります。",
            ],
        ),
    ]
    return paras


def _cover(c: dict, year: int, filing_date: str, amended: bool) -> list[tuple[str, str]]:
    y, m, d = filing_date.split("-")
    return [
        ("提出書類", "訂正有価証券報告書" if amended else "有価証券報告書"),
        ("根拠条文", "金融商品取引法第24条の2第1項" if amended else "金融商品取引法第24条第1項"),
        ("提出先", "関東財務局長"),
        ("提出日", f"{int(y)}年{int(m)}月{int(d)}日"),
        ("事業年度", f"第{_period(c, year)}期（自　{year - 1}年4月1日　至　{year}年3月31日）"),
        ("会社名", c["name"]),
        ("英訳名", c["name_en"]),
        ("代表者の役職氏名", f"代表取締役社長　{c['representative']}"),
        ("本店の所在の場所", c["address"]),
        ("電話番号", c["phone"]),
        ("事務連絡者氏名", f"経理部長　{c['contact_person']}"),
        ("e-mail", c["email"]),
        ("縦覧に供する場所", "株式会社東京証券取引所（東京都中央区日本橋兜町2番1号）"),
    ]


def _table(c: dict, year: int) -> list[list[str]]:
    ys = list(range(year - 4, year + 1))
    fin = c["financials"]
    return [
        ["回次"] + [f"第{_period(c, y)}期" for y in ys],
        ["決算年月"] + [f"{y}年3月" for y in ys],
        ["売上高（百万円）"] + [_jp_num(fin[str(y)]["revenue"]) for y in ys],
        ["営業利益（百万円）"] + [_jp_num(fin[str(y)]["operating_income"]) for y in ys],
        ["総資産額（百万円）"] + [_jp_num(fin[str(y)]["total_assets"]) for y in ys],
        ["従業員数（名）"] + [_jp_num(fin[str(y)]["employees"]) for y in ys],
    ]


def filing_content(c: dict, year: int, filing_date: str, seed: int, amended: bool = False) -> list[dict]:
    """Canonical sections of one filing: ``[{"name", "kind": cover|table|text, "lines"}]`` in SECTIONS order."""
    builders = [_history, _business, _employees, _policy, _risks, _mdna]
    sections = [
        {"name": SECTIONS[0], "kind": "cover", "lines": _cover(c, year, filing_date, amended)},
        {"name": SECTIONS[1], "kind": "table", "lines": _table(c, year)},
    ]
    for name, build in zip(NARRATIVE_SECTIONS, builders, strict=True):
        rng = _sub(seed, "filing", c["edinet_code"], year, name)
        sections.append({"name": name, "kind": "text", "lines": build(c, year, rng)})
    return sections


def section_text(sec: dict) -> str:
    """Plain text of a section (the body under its heading), one line per paragraph / row / field."""
    if sec["kind"] == "cover":
        return "\n".join(f"【{k}】　{v}" for k, v in sec["lines"])
    if sec["kind"] == "table":
        return "\n".join("\t".join(row) for row in sec["lines"])
    return "\n".join(sec["lines"])


def clean_view(text: str, c: dict | None = None) -> str:
    """What the cleaning stage makes of canonical text: NFKC, PII masked (as ``finmerge/corpus/clean.py`` does)."""
    text = unicodedata.normalize("NFKC", text)
    if c is not None:
        text = text.replace(c["email"], "<EMAIL>").replace(c["phone"], "<PHONE>")
    return text


def shingles(text: str, n: int = SHINGLE) -> set[str]:
    """Character n-grams of the text normalised as ``finmerge/corpus/dedup.py`` does (no whitespace next to Japanese)."""
    t = re.sub(r" (?=[^\x00-\x7f])|(?<=[^\x00-\x7f]) ", "", re.sub(r"\s+", " ", text).strip())
    if len(t) <= n:
        return {t}
    return {t[i : i + n] for i in range(len(t) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


# --------------------------------------------------------------------------------------------------------------
# Amendments (near duplicates)

_NUM = re.compile(r"\d[\d,]*\d|\d")


def _op_number(lines: list[str], rng: random.Random, c: dict) -> list[str] | None:
    # never touch the contact line: a changed phone digit would vanish again under PII masking
    idx = [i for i, line in enumerate(lines) if _NUM.search(line) and c["phone"] not in line]
    if not idx:
        return None
    i = _pick(rng, idx)
    matches = list(_NUM.finditer(lines[i]))
    m = _pick(rng, matches)
    digits = [k for k, ch in enumerate(m.group()) if ch.isdigit()]
    if len(digits) < 2:
        return None
    k = _pick(rng, digits[1:])
    s = m.group()
    new = s[:k] + str((int(s[k]) + rng.randint(1, 8)) % 10) + s[k + 1 :]
    out = list(lines)
    out[i] = lines[i][: m.start()] + new + lines[i][m.end() :]
    return out


def _op_add(lines: list[str], rng: random.Random) -> list[str] | None:
    idx = [i for i, line in enumerate(lines) if line.endswith("。")]
    if not idx:
        return None
    i = _pick(rng, idx)
    out = list(lines)
    out[i] = lines[i] + _pick(rng, AMEND_SENTENCES)
    return out


def _op_drop(lines: list[str], rng: random.Random, keep: list[str]) -> list[str] | None:
    cands = []
    for i, line in enumerate(lines):
        sents = [s + "。" for s in line.split("。") if s]
        if len(sents) >= 2:
            cands += [(i, k) for k, s in enumerate(sents) if s not in keep]
    if not cands:
        return None
    i, k = _pick(rng, cands)
    sents = [s + "。" for s in lines[i].split("。") if s]
    out = list(lines)
    out[i] = "".join(s for j, s in enumerate(sents) if j != k)
    return out


def _op_reword(lines: list[str], rng: random.Random) -> list[str] | None:
    pairs = [
        ("しております", "しています"),
        ("であります", "です"),
        ("となりました", "になりました"),
        ("まいります", "いきます"),
    ]
    cands = [(i, a, b) for i, line in enumerate(lines) for a, b in pairs if a in line]
    if not cands:
        return None
    i, a, b = _pick(rng, cands)
    out = list(lines)
    out[i] = lines[i].replace(a, b, 1)
    return out


def amend_section(lines: list[str], c: dict, rng: random.Random) -> tuple[list[str], float]:
    """A few sentences / numbers changed until the cleaned text's Jaccard falls into NEAR_JACCARD."""
    lo, hi = NEAR_JACCARD
    base = shingles(clean_view("\n".join(lines), c))
    keep = list(fact_sentences(c).values())
    cur, j = list(lines), 1.0
    for _ in range(60):
        if j <= hi:
            break
        op = _pick(rng, ["number", "number", "add", "drop", "reword"])
        if op == "number":
            cand = _op_number(cur, rng, c)
        elif op == "add":
            cand = _op_add(cur, rng)
        elif op == "drop":
            cand = _op_drop(cur, rng, keep)
        else:
            cand = _op_reword(cur, rng)
        if cand is None or cand == cur:
            continue
        jc = jaccard(base, shingles(clean_view("\n".join(cand), c)))
        if jc >= lo:
            cur, j = cand, jc
    return cur, round(j, 4)


# --------------------------------------------------------------------------------------------------------------
# Dirt (all of it undone by NFKC + punctuation normalisation in finmerge/corpus/clean.py)


def _halfwidth_map() -> dict[str, str]:
    out = {}
    for cp in range(0xFF65, 0xFFA0):
        h = chr(cp)
        f = unicodedata.normalize("NFKC", h)
        if len(f) == 1 and ("\u30a0" <= f <= "\u30ff"):
            out.setdefault(f, h)
        for mark in ("\uff9e", "\uff9f"):
            g = unicodedata.normalize("NFKC", h + mark)
            if len(g) == 1 and g != f:
                out.setdefault(g, h + mark)
    return out


_HALF = _halfwidth_map()
_KATA_RUN = re.compile(r"[\u30a1-\u30fa\u30fc\u30fb]{2,}")
_ALNUM_ADJ_PUNCT = re.compile(r"[0-9A-Za-z][、。][0-9A-Za-z]")


def _fullwidth(s: str) -> str:
    return "".join(chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch for ch in s)


def dirty_line(line: str, style: dict, rng: random.Random) -> str:
    if style["hw_kana"] and rng.random() < style["hw_kana"]:
        line = _KATA_RUN.sub(lambda m: "".join(_HALF.get(ch, ch) for ch in m.group()), line)
    if style["fw_alnum"] and rng.random() < style["fw_alnum"]:
        line = _fullwidth(line)
    if style["fw_punct"] and not _ALNUM_ADJ_PUNCT.search(line):
        line = line.replace("、", "，").replace("。", "．")
    return line


def dirty_sections(sections: list[dict], style: dict, rng: random.Random) -> list[dict]:
    out = []
    for sec in sections:
        if sec["kind"] == "cover":
            lines = [(k, dirty_line(v, style, rng)) for k, v in sec["lines"]]
        elif sec["kind"] == "table":
            lines = [[dirty_line(cell, style, rng) for cell in row] for row in sec["lines"]]
        else:
            lines = [dirty_line(line, style, rng) for line in sec["lines"]]
        out.append({**sec, "lines": lines})
    return out


# --------------------------------------------------------------------------------------------------------------
# Raw forms

_STYLE_CSS = "body{font-family:serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 6px}"
_SCRIPT = (
    "window.dataLayer=window.dataLayer||[];function gtag(){dataLayer.push(arguments);}gtag('js',new Date());"
)


def _heading(i: int, name: str) -> str:
    return f"{FW_DIGITS[(i + 1) % 10] if i < 9 else i + 1}【{name}】"


def render_html(doc: dict) -> str:
    e = html.escape
    title = f"{doc['company']}（{doc['edinet_code']}）{doc['title']}"
    out = [
        "<!DOCTYPE html>",
        '<html lang="ja">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        f"<style>{_STYLE_CSS}</style>",
        f"<script>{_SCRIPT}</script>",
        "</head>",
        "<body>",
        '<div class="nav"><a href="/">EDINET閲覧サイト</a>&nbsp;|&nbsp;<a href="/list">書類一覧</a>&nbsp;|&nbsp;ヘルプ</div>',
        '<div class="doc">',
    ]
    for i, sec in enumerate(doc["sections"]):
        tag = "h2" if i == 0 else "h3"
        out.append(f"<{tag}>{e(_heading(i, sec['name']))}</{tag}>")
        if sec["kind"] == "cover":
            out += [f"<p>【{e(k)}】&#12288;{e(v)}</p>" for k, v in sec["lines"]]
        elif sec["kind"] == "table":
            out.append('<table class="fin">')
            for r, row in enumerate(sec["lines"]):
                cells = "".join(
                    f"<{'th' if r == 0 or j == 0 else 'td'}>{e(cell) or '&nbsp;'}</{'th' if r == 0 or j == 0 else 'td'}>"
                    for j, cell in enumerate(row)
                )
                out.append(f"<tr>{cells}</tr>")
            out.append("</table>")
        else:
            out += [f"<p>{e(line)}</p>" for line in sec["lines"]]
        out.append('<p class="pagetop"><a href="#top">このページの先頭へ</a></p>')
    out += [
        "</div>",
        "<script>document.querySelectorAll('a').forEach(function(a){a.rel='noopener';});</script>",
        '<div class="footer">Copyright &copy; EDINET閲覧サイト All Rights Reserved.</div>',
        "</body>",
        "</html>",
    ]
    return "\n".join(out) + "\n"


def render_text(doc: dict, rng: random.Random) -> str:
    header = f"{doc['company']}（{doc['edinet_code']}）{doc['title']}"
    body: list[str] = []
    for i, sec in enumerate(doc["sections"]):
        body.append(_heading(i, sec["name"]))
        if sec["kind"] == "cover":
            body += [f"【{k}】　{v}" for k, v in sec["lines"]]
        elif sec["kind"] == "table":
            body += ["　　".join(row) for row in sec["lines"]]
        else:
            body += sec["lines"]
    out, page, k = [header, ""], 1, 0
    per_page = rng.randint(*LINES_PER_PAGE)
    for line in body:
        out.append(line)
        k += 1
        if k >= per_page:
            out += ["", f"- {page} -", "\f" if rng.random() < 0.3 else "", header, ""]
            page, k = page + 1, 0
            per_page = rng.randint(*LINES_PER_PAGE)
    out += ["", f"- {page} -"]
    return "\n".join(out) + "\n"


def render_jsonl(doc: dict) -> list[dict]:
    recs = []
    for sec in doc["sections"]:
        text = section_text(sec)
        if doc.get("jsonl_br") and sec["kind"] == "text":
            text = "<br>".join(sec["lines"])
        recs.append(
            {
                "doc_id": doc["doc_id"],
                "edinet_code": doc["edinet_code"],
                "company": doc["company"],
                "filing_date": doc["filing_date"],
                "section": sec["name"],
                "text": text,
            }
        )
    return recs


# --------------------------------------------------------------------------------------------------------------
# Junk and non-Japanese documents


def junk_text(kind: str, rng: random.Random) -> str:
    if kind == "soup":
        chars = "★☆◆◇■□▲△●○※＃＄％＆＠！？＊＋＝｜〒♪→←↑↓0123456789ｱｲｳ"
        return "\n".join("".join(_pick(rng, chars) for _ in range(rng.randint(30, 60))) for _ in range(8))
    if kind == "table":
        rows = []
        for _ in range(12):
            rows.append("　".join(_jp_num(rng.randint(100, 999999)) for _ in range(6)))
        return "\n".join(rows)
    if kind == "stub":
        return _pick(
            rng,
            [
                "ただいま準備中です。詳細は後日掲載します",
                "このページは現在作成中です。しばらくお待ち",
                "掲載準備中のため、内容は後日公開予定です",
            ],
        )[:20]
    spam = [
        "今すぐクリックして無料登録!",
        "出会い系サイトで素敵な出会いを見つけよう。",
        "カジノ無料ボーナスを今すぐ受け取ろう。",
        "アダルト動画が見放題、今すぐクリック。",
        "人気の出会い系アプリが登場しました。",
        "登録はかんたん、カジノ無料体験を実施中です。",
    ]
    filler = [
        "毎日たくさんの人が利用しています。",
        "詳しくはこちらのページをご覧ください。",
        "期間限定のキャンペーンです。",
    ]
    return "\n".join(rng.sample(spam, len(spam)) + filler)


def english_text(c: dict, year: int, rng: random.Random) -> str:
    fin = c["financials"][str(year)]
    name = c["name_en"].title()
    lines = [
        "FOR IMMEDIATE RELEASE",
        f"{name} Announces Consolidated Financial Results for the Fiscal Year Ended March 31, {year}",
        f'{name} (the "Company") today announced its financial results for the fiscal year ended March 31, {year}. '
        f"Net sales were JPY {fin['revenue']:,} million and operating income was JPY {fin['operating_income']:,} million.",
        _pick(
            rng,
            [
                "The Company continued to invest in new production capacity and in research and development.",
                "Demand from key customers remained solid throughout the year despite higher input costs.",
                "The results reflect price revisions and a favorable product mix in the second half.",
            ],
        ),
        _pick(
            rng,
            [
                "For the next fiscal year, the Company expects moderate growth in both sales and profit.",
                "Management will focus on cost discipline and on expanding overseas sales channels.",
            ],
        ),
        "Forward-looking statements in this release are based on information currently available and involve risks and uncertainties.",
        "Media contact: Corporate Communications Department.",
    ]
    return "\n".join(lines)


def _junk_html(title: str, text: str) -> str:
    body = "\n".join(f"<p>{html.escape(line)}</p>" for line in text.split("\n"))
    return f'<!DOCTYPE html>\n<html>\n<head><meta charset="utf-8"><title>{html.escape(title)}</title></head>\n<body>\n{body}\n</body>\n</html>\n'


# --------------------------------------------------------------------------------------------------------------
# Evaluation sets


def harness_questions(companies: list[dict], seed: int) -> dict:
    rng = _sub(seed, "harness")
    attrs = [
        ("business", "{n}の主な事業として正しいものはどれですか。"),
        ("hq", "{n}の本社所在地として正しいものはどれですか。"),
    ]
    values = {"business": [i["business"] for i in V.INDUSTRIES], "hq": [p["hq"] for p in V.PLACES]}
    data = []
    for c in companies:
        for attr, template in attrs:
            distractors = rng.sample([v for v in values[attr] if v != c[attr]], 3)
            answer = len(data) % 4
            choices = distractors[:answer] + [c[attr]] + distractors[answer:]
            data.append(
                {
                    "id": len(data),
                    "question": template.format(n=c["name"]),
                    "context": "",
                    "choices": [{"id": k, "text": t} for k, t in enumerate(choices)],
                    "answer": answer,
                    "comment": "",
                }
            )
    return {"data-type": "multiple-choice-question", "data-name": "demo_fin", "data": data}


def chat_questions(companies: list[dict]) -> list[dict]:
    out = []
    for c in companies:
        out.append(
            {
                "id": f"fin-{len(out):04d}",
                "question": f"{c['name']}の主な事業は何ですか？",
                "answers": [c["business"]],
                "attribute": "主な事業",
            }
        )
        out.append(
            {
                "id": f"fin-{len(out):04d}",
                "question": f"{c['name']}の本社所在地はどこですか？",
                "answers": [c["hq"]],
                "attribute": "本社所在地",
            }
        )
    return out


# --------------------------------------------------------------------------------------------------------------
# The world


class _DocIds:
    """EDINET-like document ids (S100 + 4 base-36 characters), increasing in issue order."""

    ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"

    def __init__(self, rng: random.Random):
        self.n = rng.randrange(36**3, 36**4 // 2)

    def next(self) -> str:
        self.n += 1
        k, s = self.n, ""
        for _ in range(4):
            k, r = divmod(k, 36)
            s = self.ALPHABET[r] + s
        return "S100" + s


def _dump_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _dump_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8", newline="\n")


def _filing_date(year: int, rng: random.Random) -> str:
    return f"{year}-06-{rng.randint(20, 30):02d}"


def generate_world(cfg: DemoConfig, out_dir: Path) -> dict:
    """Write the demo world under ``out_dir`` (deterministic in ``cfg``) and return its counts."""
    out_dir = Path(out_dir)
    companies = make_companies(cfg)
    by_code = {c["edinet_code"]: c for c in companies}
    ids = _DocIds(_sub(cfg.seed, "docids"))
    rng = _sub(cfg.seed, "dirt")

    # Originals: one filing per company per training year.
    originals = []
    for year in cfg.years:
        for c in companies:
            date = _filing_date(year, rng)
            originals.append(
                {
                    "doc_id": ids.next(),
                    "kind": "original",
                    "edinet_code": c["edinet_code"],
                    "company": c["name"],
                    "year": year,
                    "filing_date": date,
                    "title": "有価証券報告書",
                    "sections": filing_content(c, year, date, cfg.seed),
                    "jsonl_br": c["style"]["jsonl_br"],
                }
            )
    n_filings = len(originals)
    forms = [FORMS[i % 3] for i in range(n_filings)]
    rng.shuffle(forms)
    for doc, form in zip(originals, forms, strict=True):
        doc["form"] = form
        doc["sections"] = dirty_sections(doc["sections"], by_code[doc["edinet_code"]]["style"], rng)

    n_exact = round(cfg.exact_dup_rate * n_filings)
    n_near = round(cfg.near_dup_rate * n_filings)
    n_junk = round(cfg.junk_rate * n_filings)
    n_nonja = round(cfg.non_japanese_rate * n_filings)
    if n_exact + n_near > n_filings:
        raise ValueError("exact_dup_rate + near_dup_rate must not exceed 1")
    picked = rng.sample(range(n_filings), n_exact + n_near)

    docs = list(originals)
    exact_truth, near_truth = [], []
    for i in picked[:n_exact]:
        orig = originals[i]
        # A re-saved copy is met after its original by a sorted walk (html < jsonl < text, then doc_id).
        form = _pick(rng, FORMS[FORMS.index(orig["form"]) :])
        dup = {**orig, "doc_id": ids.next(), "kind": "exact_dup", "form": form}
        docs.append(dup)
        exact_truth.append({"doc_id": dup["doc_id"], "original": orig["doc_id"], "form": form})
    for i in picked[n_exact:]:
        orig = originals[i]
        c = by_code[orig["edinet_code"]]
        date = f"{orig['year']}-{rng.randint(8, 11):02d}-{rng.randint(1, 28):02d}"
        canon = filing_content(c, orig["year"], date, cfg.seed, amended=True)
        jac = {}
        arng = _sub(cfg.seed, "amend", orig["doc_id"])
        for sec in canon:
            if sec["kind"] == "text":
                sec["lines"], jac[sec["name"]] = amend_section(sec["lines"], c, arng)
        dup = {
            **orig,
            "doc_id": ids.next(),
            "kind": "near_dup",
            "filing_date": date,
            "title": "訂正有価証券報告書",
            "form": _pick(rng, FORMS),
            "sections": dirty_sections(canon, c["style"], rng),
        }
        docs.append(dup)
        near_truth.append(
            {"doc_id": dup["doc_id"], "original": orig["doc_id"], "form": dup["form"], "jaccard": jac}
        )

    junk_truth, nonja_truth = [], []
    kinds = ["soup", "table", "stub", "ng_spam"]
    for k in range(n_junk):
        kind = kinds[k % len(kinds)]
        d = {
            "doc_id": ids.next(),
            "kind": "junk",
            "junk_kind": kind,
            "form": _pick(rng, FORMS),
            "text": junk_text(kind, rng),
        }
        docs.append(d)
        junk_truth.append({"doc_id": d["doc_id"], "kind": kind, "form": d["form"]})
    for _ in range(n_nonja):
        c = _pick(rng, companies)
        d = {
            "doc_id": ids.next(),
            "kind": "non_japanese",
            "form": _pick(rng, FORMS),
            "text": english_text(c, _pick(rng, cfg.years), rng),
        }
        docs.append(d)
        nonja_truth.append({"doc_id": d["doc_id"], "form": d["form"]})

    # Write the raw forms.
    fdir = out_dir / "filings"
    jsonl_rows: list[dict] = []
    trng = _sub(cfg.seed, "render")
    for d in sorted(docs, key=lambda d: d["doc_id"]):
        if d["kind"] in ("junk", "non_japanese"):
            if d["form"] == "html":
                p = fdir / "html" / f"{d['doc_id']}.html"
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(
                    _junk_html("お知らせ" if d["kind"] == "junk" else "Press Release", d["text"]),
                    encoding="utf-8",
                )
            elif d["form"] == "text":
                p = fdir / "text" / f"{d['doc_id']}.txt"
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(d["text"] + "\n", encoding="utf-8")
            else:
                jsonl_rows.append(
                    {
                        "doc_id": d["doc_id"],
                        "edinet_code": None,
                        "company": None,
                        "filing_date": None,
                        "section": None,
                        "text": d["text"],
                    }
                )
            continue
        if d["form"] == "html":
            p = fdir / "html" / f"{d['doc_id']}.html"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(render_html(d), encoding="utf-8")
        elif d["form"] == "text":
            p = fdir / "text" / f"{d['doc_id']}.txt"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(render_text(d, trng), encoding="utf-8")
        else:
            jsonl_rows += render_jsonl(d)
    _dump_jsonl(fdir / "jsonl" / "part-000.jsonl", jsonl_rows)

    # Held-out year: clean narrative sections only.
    heldout = []
    for c in companies:
        date = _filing_date(cfg.heldout_year, _sub(cfg.seed, "heldout-date", c["edinet_code"]))
        doc_id = ids.next()
        for sec in filing_content(c, cfg.heldout_year, date, cfg.seed):
            if sec["kind"] == "text":
                heldout.append(
                    {
                        "text": clean_view(section_text(sec), c),
                        "company": c["name"],
                        "section": sec["name"],
                        "doc_id": doc_id,
                    }
                )
    _dump_jsonl(out_dir / "eval" / "heldout.jsonl", heldout)

    # General corpus and instructions.
    towns = general.make_towns(cfg.n_towns, _sub(cfg.seed, "towns"), {p for p, _ in V.COMPANY_PREFIXES})
    corpus = general.general_corpus(cfg.n_general_docs, towns, _sub(cfg.seed, "general"))
    _dump_jsonl(out_dir / "general" / "corpus.jsonl", [{"text": t} for t in corpus])
    instr = general.instructions(cfg.n_instructions, towns, _sub(cfg.seed, "instructions"))
    _dump_jsonl(out_dir / "instructions" / "train.jsonl", instr)

    harness = harness_questions(companies, cfg.seed)
    _dump_json(out_dir / "eval" / "harness" / "demo_fin" / "data.json", harness)
    chat = chat_questions(companies)
    _dump_jsonl(out_dir / "eval" / "chat_finance.jsonl", chat)

    filings_index = [
        {
            "doc_id": d["doc_id"],
            "kind": d["kind"],
            "form": d["form"],
            "edinet_code": d.get("edinet_code"),
            "company": d.get("company"),
            "year": d.get("year"),
            "filing_date": d.get("filing_date"),
        }
        for d in docs
    ]
    counts = {
        "companies": len(companies),
        "filings": n_filings,
        "exact_duplicates": n_exact,
        "near_duplicates": n_near,
        "junk": n_junk,
        "non_japanese": n_nonja,
        "raw_documents": len(docs),
        "forms": {f: sum(1 for d in docs if d["form"] == f) for f in FORMS},
        "narrative_sections_per_filing": len(NARRATIVE_SECTIONS),
        "heldout_sections": len(heldout),
        "general_docs": len(corpus),
        "instructions": len(instr),
        "towns": len(towns),
        "harness_questions": len(harness["data"]),
        "chat_questions": len(chat),
    }
    truth = {
        "exact_duplicates": exact_truth,
        "near_duplicates": near_truth,
        "junk": junk_truth,
        "non_japanese": nonja_truth,
        "documents": filings_index,
        "counts": counts,
    }
    _dump_json(out_dir / "truth.json", truth)
    world = {
        "seed": cfg.seed,
        "years": list(cfg.years),
        "heldout_year": cfg.heldout_year,
        "companies": [
            {k: v for k, v in c.items() if k not in ("style",)} | {"facts": fact_sentences(c)}
            for c in companies
        ],
        "towns": towns,
    }
    _dump_json(out_dir / "world.json", world)
    return counts
