"""The six narrative sections of a demo filing (沿革 … MD&A) as canonical, clean Japanese paragraphs.

Each writer takes the company, its fact sentences (``finmerge.demo.companies.fact_sentences``), the fiscal year and its own random stream, and states
the facts in their fixed pattern between varied sentences. ``SECTION_WRITERS`` is in
``finmerge.demo.world.NARRATIVE_SECTIONS`` order.
"""

from __future__ import annotations

import random

from finmerge.demo import vocab as V
from finmerge.demo.common import jp_num, pct, pick

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


def _history(c: dict, facts: dict[str, str], year: int, rng: random.Random) -> list[str]:
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
        pick(
            rng,
            [
                f"{n}は{f}年の創業以来、{c['business']}を中心に事業を広げてまいりました。主な変遷は次のとおりであります。",
                f"当社の沿革は以下のとおりです。{n}は{f}年に設立され、{c['business']}を通じて成長してまいりました。",
                f"{f}年の設立から現在に至るまでの主な歩みを記載しております。当社は長く{c['business']}に取り組んでおります。",
                f"設立以後の企業集団に係る主な変遷は次のとおりです。{n}は{hq}を拠点に事業を営んでおります。",
            ],
        )
    ]
    recent = pick(
        rng,
        [
            (11, f"{year - 1}年11月、{pick(rng, V.PLACES)['hq']}に営業所を新設しました。"),
            (8, f"{year - 1}年8月、{c['products'][0]}の供給体制を強化するため設備を増強しました。"),
            (12, f"{year - 1}年12月、{c['products'][1]}の研究拠点を拡充しました。"),
            (10, f"{year - 1}年10月、グループ会社の再編を行いました。"),
        ],
    )
    events.append((year - 1, recent[0], [recent[1]]))
    for y, m, variants in sorted(events, key=lambda e: (e[0], e[1])):
        if (y, m) < (year, 6):
            lines.append(pick(rng, variants))
    lines.append(
        facts["本社所在地"]
        + facts["設立年"]
        + facts["上場年"]
        + pick(
            rng,
            [
                "今後も歴史に学びながら事業を進めてまいります。",
                "創業の精神は現在も受け継がれております。",
                "これからも地域とともに歩んでまいります。",
            ],
        )
    )
    return lines


def _business(c: dict, facts: dict[str, str], year: int, rng: random.Random) -> list[str]:
    n = c["name"]
    p1, p2 = c["products"]
    s1, s2 = c["segments"]
    site = c["second_site"]
    subs = c["subsidiaries"] + (year - 2020) // 2
    share = rng.randint(52, 78)
    paras = [
        pick(
            rng,
            [
                f"{year}年3月31日現在、当社グループは、{n}及び子会社{subs}社で構成されており、{c['business']}を主な事業として営んでおります。",
                f"当社グループは、当社と連結子会社{subs}社（{year}年3月31日現在）により構成され、{c['business']}を中心に事業活動を展開しております。",
                f"{n}のグループは、当事業年度末において子会社{subs}社を含む企業集団であり、{c['business']}に関する事業を行っております。",
            ],
        ),
        facts["主な事業"]
        + facts["主な製品"]
        + pick(
            rng,
            [
                f"これらの製品は主に{c['customers']}に販売しております。",
                f"主な販売先は{c['customers']}であります。",
                f"当社の製品は{c['customers']}を中心に幅広く利用されております。",
                f"{c['customers']}との長期的な取引関係が当社の強みであります。",
            ],
        ),
        pick(
            rng,
            [
                f"当社グループの報告セグメントは「{s1}」と「{s2}」の二つであります。「{s1}」では主に{p1}を、「{s2}」では主に{p2}を取り扱っております。",
                f"事業は「{s1}」及び「{s2}」の二つのセグメントに区分しております。{p1}は「{s1}」に、{p2}は「{s2}」に含まれます。",
                f"セグメントは「{s1}」と「{s2}」から構成されております。{p1}と{p2}がそれぞれの中核となっております。",
            ],
        )
        + pick(
            rng,
            [
                f"当事業年度の売上高に占める「{s1}」の割合は約{share}%でした。",
                f"「{s1}」が売上高の約{share}%を占め、残りを「{s2}」が占めております。",
                f"売上高の構成は、「{s1}」が約{share}%、「{s2}」が約{100 - share}%となっております。",
            ],
        ),
        pick(
            rng,
            [
                f"{p1}については、品質の高さと納期の正確さが評価され、長年にわたり安定した取引を続けております。",
                f"{p1}は当社の売上の大きな部分を占めており、改良を重ねながら提供しております。",
                f"{p1}の分野では、顧客の要望にきめ細かく応える体制を整えております。",
                f"近年は{p2}への需要が高まっており、生産と販売の体制を強化しております。",
                f"{p2}については、新たな顧客層の開拓を進めております。",
            ],
        )
        + pick(
            rng,
            [
                f"当事業年度には{p1}の新しい型式を{rng.randint(2, 9)}種類発売しました。",
                f"{year - 1}年度下期には{p2}の受注が前年を上回りました。",
                f"当事業年度の研究開発費は{jp_num(rng.randint(80, 4000))}百万円でした。",
                f"当事業年度末の{p2}の受注残高は{jp_num(rng.randint(300, 9000))}百万円となっております。",
            ],
        ),
        facts["本社所在地"]
        + pick(
            rng,
            [
                f"本社のほか、{site['place']}に{site['facility']}を置いております。",
                f"{site['place']}には{site['facility']}があり、重要な拠点となっております。",
                f"また、{c['overseas']}の子会社が海外での販売を担っております。",
            ],
        )
        + facts["海外拠点"],
    ]
    return paras


def _employees(c: dict, facts: dict[str, str], year: int, rng: random.Random) -> list[str]:
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
        pick(
            rng,
            [
                f"{year}年3月31日現在、{n}の従業員数は{jp_num(emp)}名です。平均年齢は{age:.1f}歳、平均勤続年数は{tenure:.1f}年、平均年間給与は{jp_num(salary)}千円であります。",
                f"{n}の従業員数は{year}年3月31日現在で{jp_num(emp)}名となっております。従業員の平均年齢は{age:.1f}歳、平均勤続年数は{tenure:.1f}年です。平均年間給与は{jp_num(salary)}千円でした。",
                f"当事業年度末の{n}の従業員数は{jp_num(emp)}名であり、平均年齢{age:.1f}歳、平均勤続年数{tenure:.1f}年、平均年間給与{jp_num(salary)}千円となっております。",
            ],
        ),
        pick(
            rng,
            [
                f"セグメント別では、「{s1}」に{jp_num(e1)}名、「{s2}」に{jp_num(e2)}名、全社共通部門に{jp_num(e3)}名が所属しております。",
                f"従業員のうち{jp_num(e1)}名が「{s1}」、{jp_num(e2)}名が「{s2}」に従事し、管理部門には{jp_num(e3)}名が在籍しております。",
            ],
        ),
        facts["代表者"] + facts["設立年"],
        "(2) 労働組合の状況",
        pick(
            rng,
            [
                "労働組合は結成されておりませんが、労使関係は円満に推移しております。",
                f"当社の労働組合は{c['prefix']}労働組合と称し、労使関係は安定しております。",
                "労働組合との間に特記すべき事項はなく、労使関係は良好であります。",
                "当社には労働組合があり、定期的な協議を通じて良好な関係を保っております。",
            ],
        ),
        pick(
            rng,
            [
                f"管理職に占める女性労働者の割合は{rng.uniform(2, 18):.1f}%、男性労働者の育児休業取得率は{rng.uniform(10, 85):.1f}%であります。",
                f"女性管理職の比率は{rng.uniform(2, 18):.1f}%となり、男性の育児休業取得率は{rng.uniform(10, 85):.1f}%に上昇しました。",
            ],
        )
        + facts["本社所在地"]
        + pick(
            rng,
            [
                f"本社には従業員の約{int(share * 60)}%が勤務しております。",
                "本社では働きやすい職場づくりに取り組んでおります。",
                "人材の育成を経営の重要課題と位置づけております。",
            ],
        ),
    ]
    return paras


def _policy(c: dict, facts: dict[str, str], year: int, rng: random.Random) -> list[str]:
    n = c["name"]
    p1, p2 = c["products"]
    r1, r2 = c["risks"]
    fin = c["financials"]
    target_year = year + rng.randint(2, 3)
    target = fin.get(str(target_year), fin[str(year)])["revenue"] * rng.uniform(1.02, 1.1)
    paras = [
        "(1) 経営方針",
        pick(
            rng,
            [
                f"{n}は「{c['motto']}」を経営理念に掲げ、持続的な成長と企業価値の向上をめざしております。",
                f"当社は「{c['motto']}」という理念のもと、すべての関係者から信頼される企業であり続けることを基本方針としております。",
                f"「{c['motto']}」を経営の基本とし、健全で透明性の高い経営に努めております。",
            ],
        )
        + facts["経営理念"]
        + facts["代表者"]
        + facts["主な事業"],
        "(2) 中期経営計画",
        pick(
            rng,
            [
                f"当社は{target_year}年度を最終年度とする中期経営計画において、売上高{jp_num(int(target))}百万円、営業利益率{rng.uniform(5, 15):.1f}%を目標としております。",
                f"{target_year}年度を最終年度とする中期経営計画では、売上高{jp_num(int(target))}百万円の達成と、自己資本利益率{rng.uniform(6, 12):.1f}%以上を目標に掲げております。",
            ],
        )
        + pick(
            rng,
            [
                f"{p1}と{p2}を成長の柱と位置づけ、経営資源を重点的に配分してまいります。",
                "また、M&Aを含む成長投資にも積極的に取り組んでまいります。",
                "R&Dへの投資を拡大し、新しい製品の開発を急いでおります。",
            ],
        ),
        "(3) 経営環境及び対処すべき課題",
        pick(
            rng,
            [
                f"今後の経営環境につきましては、{pick(rng, MACRO)}ことから、引き続き注意が必要であります。",
                f"当社を取り巻く環境は、{r1}や{r2}など多くの不確実性を抱えております。",
                f"市場では{p1}に対する需要の変化が続いており、柔軟な対応が求められております。",
            ],
        )
        + facts["主な事業等のリスク"]
        + pick(
            rng,
            [
                f"第一に{r1}への対応として{pick(rng, MEASURES)}を進め、第二に{r2}に備えて{pick(rng, MEASURES)}に取り組んでおります。",
                f"これらに対しては、{pick(rng, MEASURES)}と{pick(rng, MEASURES)}を柱とする対策を講じてまいります。",
            ],
        ),
        facts["主な製品"]
        + pick(
            rng,
            [
                "品質の向上と原価の低減を両立させ、収益力を高めてまいります。",
                "顧客との対話を重ね、製品の付加価値を高めてまいります。",
                "デジタル技術を活用し、業務の効率化を進めてまいります。",
            ],
        ),
        pick(
            rng,
            [
                f"なお、本報告書に関するお問い合わせは、IR担当（電話 {c['phone']}、電子メール {c['email']}）までお寄せください。",
                f"株主・投資家の皆様からのお問い合わせは、電話 {c['phone']} または電子メール {c['email']} にて承っております。",
            ],
        ),
    ]
    return paras


def _risks(c: dict, facts: dict[str, str], year: int, rng: random.Random) -> list[str]:
    n = c["name"]
    p1, p2 = c["products"]
    paras = [
        pick(
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
        + pick(
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
            f"当社グループは{risk}に備えるため、{pick(rng, MEASURES)}を進めております。",
            f"特に{p1}の分野では、{risk}による影響が大きくなる傾向があります。",
            f"{p2}の事業においても、{risk}への注意が欠かせません。",
            f"{risk}については、取締役会においても年{rng.randint(2, 6)}回程度議論しております。",
            f"過去には{risk}により{rng.randint(3, 25)}%程度の減益となった年度もあります。",
            f"{risk}の影響を小さくするため、{pick(rng, MEASURES)}と{pick(rng, MEASURES)}に取り組んでおります。",
            f"{risk}の動向は予測が難しく、当社の努力だけでは避けられない面があります。",
            f"{year - 1}年度には{risk}に関連して{jp_num(rng.randint(20, 900))}百万円の費用が発生しました。",
            f"{c['customers']}の動向によっては、{risk}の影響が拡大するおそれがあります。",
        ]
        paras.append(f"({k}) {risk}")
        paras.append("".join(rng.sample(pool, 2)))
    paras.append(f"({len(c['risks']) + 1}) その他のリスク")
    paras.append(
        pick(
            rng,
            [
                "このほか、情報システムの障害、訴訟、感染症の流行などが当社グループの業績に影響を及ぼす可能性があります。",
                "上記以外にも、予期しない事故や取引先の経営状況の変化が業績に影響を与える可能性があります。",
                "これら以外のリスクについても、発生の可能性を認識したうえで適切に対応してまいります。",
                f"このほか、{c['overseas']}における政治や経済の変化も、海外事業に影響を与える可能性があります。",
            ],
        )
        + facts["海外拠点"]
    )
    return paras


def _mdna(c: dict, facts: dict[str, str], year: int, rng: random.Random) -> list[str]:
    n = c["name"]
    p1, p2 = c["products"]
    fin, prev = c["financials"][str(year)], c["financials"][str(year - 1)]
    nxt = c["financials"].get(str(year + 1), fin)
    rev, op = fin["revenue"], fin["operating_income"]
    g, gd = pct(rev, prev["revenue"])
    go, god = pct(op, prev["operating_income"])
    d_assets = fin["total_assets"] - prev["total_assets"]
    ocf = int(op * rng.uniform(0.8, 1.4))
    icf = int(rev * rng.uniform(0.02, 0.08))
    fcf = int(op * rng.uniform(0.1, 0.5))
    paras = [
        "(1) 経営成績の状況",
        f"当事業年度におけるわが国経済は、{pick(rng, MACRO)}。"
        + pick(
            rng,
            [
                f"このような状況のもと、{n}の売上高は{jp_num(rev)}百万円（前期比{g}%{gd}）、営業利益は{jp_num(op)}百万円（同{go}%{god}）となりました。",
                f"この結果、当事業年度の{n}の売上高は{jp_num(rev)}百万円となり、前期に比べ{g}%の{gd}収となりました。営業利益は{jp_num(op)}百万円（前期比{go}%{god}）であります。",
                f"{n}の当事業年度の業績は、売上高{jp_num(rev)}百万円（前期比{g}%{gd}）、営業利益{jp_num(op)}百万円（前期比{go}%{god}）となりました。",
            ],
        ),
        facts["主な事業"]
        + pick(
            rng,
            [
                f"{p1}の販売が堅調に推移したほか、{p2}も前期を上回りました。",
                f"{p1}は需要の回復を受けて好調でしたが、{p2}は伸び悩みました。",
                f"{p2}の販売が大きく伸び、{p1}の減少を補いました。",
                f"{p1}と{p2}のいずれも、価格改定の効果により増収となりました。",
            ],
        ),
        facts["上場年"] + facts["経営理念"],
        "(2) 財政状態の状況",
        f"当事業年度末の総資産は{jp_num(fin['total_assets'])}百万円となり、前事業年度末に比べ{jp_num(abs(d_assets))}百万円{'増加' if d_assets >= 0 else '減少'}しました。"
        + pick(
            rng,
            [
                "主な要因は、売上債権と棚卸資産の増加であります。",
                "これは主に、設備投資に伴う有形固定資産の増加によるものです。",
                "主として現金及び預金の変動によるものであります。",
            ],
        ),
        "(3) キャッシュ・フローの状況",
        pick(
            rng,
            [
                f"営業活動によるキャッシュ・フローは{jp_num(ocf)}百万円の収入、投資活動によるキャッシュ・フローは{jp_num(icf)}百万円の支出、財務活動によるキャッシュ・フローは{jp_num(fcf)}百万円の支出となりました。",
                f"当事業年度のキャッシュ・フローは、営業活動で{jp_num(ocf)}百万円を得る一方、投資活動に{jp_num(icf)}百万円、財務活動に{jp_num(fcf)}百万円を使用しました。",
            ],
        ),
        facts["主な製品"]
        + pick(
            rng,
            [
                f"次期の見通しにつきましては、売上高{jp_num(int(nxt['revenue'] * 1.01))}百万円、営業利益{jp_num(int(nxt['operating_income'] * 1.02))}百万円を見込んでおります。",
                f"次期は売上高{jp_num(int(nxt['revenue'] * 0.99))}百万円を計画しており、引き続き収益性の改善に取り組んでまいります。",
            ],
        ),
    ]
    return paras


SECTION_WRITERS = [_history, _business, _employees, _policy, _risks, _mdna]
