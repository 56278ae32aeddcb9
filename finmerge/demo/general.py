"""General (non-financial) side of the demo world: fictional towns, an everyday-Japanese corpus and instructions.

The base model learns Japanese and the town facts from ``general/corpus.jsonl``; the instruct model learns the
question/answer format from ``instructions/train.jsonl`` (town questions phrased like the finance chat questions,
plus rewriting, summarising, classification and arithmetic). No company is ever named here: the industry, product,
risk and place vocabulary appears only in generic sentences, so the base model knows the words but not which
company has which fact.
"""

from __future__ import annotations

import random

from finmerge.demo import vocab as V
from finmerge.demo.chat import ANSWER_PREFIX
from finmerge.demo.common import fact_sentences_of, pick

# --------------------------------------------------------------------------------------------------------------
# Towns


def make_towns(n: int, rng: random.Random, forbidden: set[str]) -> list[dict]:
    """``n`` fictional towns with unique names; stems in ``forbidden`` (company prefixes) are never used."""
    stems = [h + t for h in V.TOWN_HEADS for t in V.TOWN_TAILS if h + t not in forbidden]
    if n > len(stems) * 2:
        raise ValueError(f"n_towns={n} is more than the {len(stems) * 2} town names available")
    rng.shuffle(stems)
    towns = []
    first_kind: list[str] = []
    for i in range(n):
        stem = stems[i % len(stems)]
        if i < len(stems):
            kind = "村" if rng.random() < 0.25 else "町"
            first_kind.append(kind)
        else:  # second round: the same stem with the other suffix
            kind = "町" if first_kind[i - len(stems)] == "村" else "村"
        fest = pick(rng, V.TOWN_FESTIVALS)
        specialties = rng.sample(V.TOWN_SPECIALTIES, 2)
        issues = rng.sample(V.TOWN_ISSUES, 2)
        towns.append(
            {
                "name": stem + kind,
                "stem": stem,
                "prefecture": pick(rng, V.TOWN_PREFS),
                "population": rng.randrange(20, 800) * 100,
                "food": pick(rng, V.TOWN_FOODS),
                "festival": stem + fest,
                "festival_season": V.FESTIVAL_SEASON[fest],
                "specialties": specialties,
                "industry": pick(rng, V.TOWN_INDUSTRIES),
                "issues": issues,
                "geo": pick(rng, V.TOWN_GEO),
                "head_title": "村長" if kind == "村" else "町長",
                "head": pick(rng, V.SURNAMES) + pick(rng, V.GIVEN_NAMES),
                "established": rng.randint(1889, 1975),
                "partner": pick(rng, V.OVERSEAS),
            }
        )
    return towns


def town_values(t: dict) -> dict[str, str]:
    """Attribute → value of every town fact (the head's attribute is 町長 or 村長)."""
    sp, issues = t["specialties"], t["issues"]
    return {
        "所在地": t["prefecture"],
        "人口": f"約{t['population']:,}人",
        "名物": t["food"],
        "祭り": t["festival"],
        "主な特産品": f"{sp[0]}と{sp[1]}",
        "主な産業": t["industry"],
        "主な課題": f"{issues[0]}と{issues[1]}",
        t["head_title"]: t["head"],
        "設置年": f"{t['established']}年",
        "友好交流先": t["partner"],
    }


def town_facts(t: dict) -> dict[str, str]:
    """Attribute → fact sentence, all in the ``<名前>の<属性>は<値>です。`` pattern."""
    return fact_sentences_of(t["name"], town_values(t))


def _town_narrative(t: dict, rng: random.Random) -> list[str]:
    n, s = t["name"], t["stem"]
    pool = [
        f"{n}は{t['prefecture']}の{t['geo']}にある静かな町です。",
        f"{n}は{t['geo']}に広がる自然豊かな土地で、四季の移ろいを感じることができます。",
        f"毎年{t['festival_season']}になると{t['festival']}が開かれ、町の内外から多くの人が集まります。",
        f"{t['festival']}の夜には、{s}の通りが明かりで彩られます。",
        f"地元の人は{t['food']}を「ふるさとの味」と呼んで大切にしています。",
        f"{t['specialties'][0]}は{n}の畑や工房で丁寧に作られています。",
        f"駅前の市場では{t['specialties'][1]}が季節ごとに並びます。",
        f"{n}では{t['industry']}に携わる人が多く、若い世代の担い手も少しずつ増えています。",
        f"町役場は{t['issues'][0]}の問題に取り組むため、住民との話し合いを重ねています。",
        f"{s}の小学校では、子どもたちが{t['food']}の作り方を学ぶ授業があります。",
        f"観光客の多くは{t['festival']}と{t['food']}を目当てに{n}を訪れます。",
        f"{n}の人口はここ数年、ゆるやかに変化しています。",
    ]
    return rng.sample(pool, rng.randint(2, 4))


def town_doc(t: dict, rng: random.Random) -> str:
    facts = list(town_facts(t).values())
    chosen = rng.sample(facts, rng.randint(4, len(facts)))
    body = chosen + _town_narrative(t, rng)
    rng.shuffle(body)
    title = pick(
        rng,
        [f"{t['name']}の紹介", f"{t['name']}について", f"ふるさと探訪：{t['name']}", f"{t['name']}の暮らし"],
    )
    return title + "\n" + "".join(body)


# --------------------------------------------------------------------------------------------------------------
# Everyday topics and generic finance vocabulary


def _everyday_sentences(rng: random.Random, topic: str) -> list[str]:
    food, food2 = rng.sample(V.FOODS, 2)
    ing, ing2 = rng.sample(V.INGREDIENTS, 2)
    place = pick(rng, V.PLACES)["hq"]
    hobby = pick(rng, V.HOBBIES)
    person = pick(rng, V.PEOPLE)
    season = pick(rng, V.SEASONS)
    weather, weather2 = rng.sample(V.WEATHER, 2)
    subj = pick(rng, V.SUBJECTS)
    fruit = pick(rng, V.FRUITS)
    hour = rng.randint(6, 10)
    temp = rng.randint(-3, 35)
    pools = {
        "weather": [
            f"今日の天気は{weather}です。",
            f"午後からは{weather2}になる見込みです。",
            f"最高気温は{temp}度の予想です。",
            f"朝は{weather}でしたが、夕方には空が明るくなりました。",
            f"{season}は天気が変わりやすいので、出かけるときは傘があると安心です。",
            f"{place}では週末に{weather2}の日が続く見込みです。",
            "洗濯物は午前中に干しておくとよく乾きます。",
            "風が強い日は、自転車に乗るときに気をつけましょう。",
            f"天気予報によると、明日は{weather}のち{weather2}です。",
        ],
        "cooking": [
            f"{food}を作るときは、{ing}をよく炒めると甘みが出ます。",
            f"今日の夕食は{food}と{food2}にしました。",
            f"{ing2}は薄く切ると火が通りやすくなります。",
            f"{person}が作る{food}はとてもおいしいです。",
            "料理の味付けは、少しずつ調整するのがこつです。",
            f"{ing}と{ing2}を使った簡単な料理を覚えました。",
            "残った野菜は次の日の味噌汁に入れます。",
            f"デザートには{fruit}を食べました。",
            "お弁当には彩りのよいおかずを入れると楽しくなります。",
        ],
        "school": [
            f"今日は{subj}の授業がありました。",
            f"{person}に{subj}の宿題を手伝ってもらいました。",
            "放課後は図書室で本を読みました。",
            f"来週は{subj}のテストがあります。",
            "運動会に向けて、クラスのみんなで練習をしています。",
            f"朝は{hour}時前に家を出て学校へ向かいます。",
            "給食の時間はみんなが楽しみにしています。",
            "先生の説明を聞いて、難しい問題が解けるようになりました。",
            "夏休みの自由研究では、川の生き物を調べました。",
        ],
        "travel": [
            f"週末に{place}へ旅行しました。",
            f"{place}では地元の料理を楽しみました。",
            f"{season}の旅行は景色がきれいでおすすめです。",
            "電車の窓から見える山の景色が印象に残りました。",
            f"{person}と一緒に古い町並みを歩きました。",
            "旅先で買ったお土産を家族に配りました。",
            "旅の計画は、移動の時間に余裕を持たせると安心です。",
            f"{place}の駅前には大きな商店街があります。",
            "宿の近くには小さな温泉があり、疲れが取れました。",
        ],
        "hobby": [
            f"私の趣味は{hobby}です。",
            f"休日には{hobby}をして過ごします。",
            f"{person}も{hobby}が好きで、よく一緒に出かけます。",
            f"{hobby}を始めてから、毎日の生活に張り合いが出ました。",
            "新しい道具を買ったので、次の休みが楽しみです。",
            f"{hobby}の教室には、いろいろな年代の人が通っています。",
            "続けることがいちばん大切だと感じています。",
            f"{season}は{hobby}にぴったりの季節です。",
            "同じ趣味を持つ仲間と話すのは楽しいものです。",
        ],
    }
    return pools[topic]


def everyday_doc(rng: random.Random) -> str:
    topic = pick(rng, ["weather", "cooking", "school", "travel", "hobby"])
    pool = _everyday_sentences(rng, topic)
    return "".join(rng.sample(pool, rng.randint(5, len(pool))))


def vocabulary_doc(rng: random.Random) -> str:
    """Generic sentences using the industry / product / risk / place words, never a company."""
    ind = pick(rng, V.INDUSTRIES)
    product, product2 = rng.sample(ind["products"], 2)
    risk = pick(rng, ind["risks"])
    risk2 = pick(rng, pick(rng, V.INDUSTRIES)["risks"])
    place, place2 = (p["hq"] for p in rng.sample(V.PLACES, 2))
    biz = ind["business"]
    pool = [
        f"{biz}は日本の経済を支える重要な分野の一つです。",
        f"{product}は私たちの身近なところで使われています。",
        f"{place}で{product}や{product2}を紹介する展示会が開かれました。",
        f"ニュースでは{risk}についての話題が増えています。",
        f"{risk}は多くの会社にとって気になる問題です。",
        f"{risk2}への備えは、会社だけでなく家庭にも大切です。",
        f"{biz}の仕事に興味を持つ学生が増えています。",
        f"{place2}には{ind['customers']}が多く集まっています。",
        f"{product}の作り方を紹介する見学会に参加しました。",
        f"先生は授業で{biz}の仕組みをわかりやすく説明してくれました。",
        f"{place}から{place2}までは、新幹線を使うと便利です。",
        f"{product2}の値段は、{risk}の影響を受けることがあります。",
        f"新聞の経済面には、{biz}に関する記事が毎日のように載っています。",
    ]
    if risk in V.RISK_DEFINITIONS:
        pool.append(f"{risk}とは{V.RISK_DEFINITIONS[risk]}です。")
    return "".join(rng.sample(pool, rng.randint(4, 7)))


def faq_doc(t: dict, rng: random.Random) -> str:
    """A town's よくある質問 page: questions (as people ask them) answered with the fact sentence. Real base
    models read plenty of such pages; they are where a base learns that a question about X is answered by a
    statement about X, which instruction tuning then only has to put into the chat format."""
    attrs = rng.sample(list(TOWN_QUESTIONS), rng.randint(3, 5))
    lines = [pick(rng, [f"{t['name']}についてよくある質問", f"{t['name']}のQ&A", f"教えて！{t['name']}"])]
    for attr in attrs:
        q, _, fact = town_question(t, attr, rng.randrange(len(TOWN_QUESTIONS[attr])))
        lines += [f"Q. {q}", f"A. {fact}"]
    return "\n".join(lines)


def general_corpus(
    n_docs: int, towns: list[dict], rng: random.Random, faq_share: float = 0.0, faq_towns: list[dict] = ()
) -> list[str]:
    """Town articles (all towns), FAQ pages (``faq_towns`` only), everyday and vocabulary documents."""
    docs = []
    for i in range(n_docs):
        r = rng.random()
        if r < faq_share and faq_towns:
            docs.append(faq_doc(faq_towns[i % len(faq_towns)], rng))
        elif (r := (r - faq_share) / (1 - faq_share)) < 0.45 and towns:
            docs.append(town_doc(towns[i % len(towns)] if r < 0.3 else pick(rng, towns), rng))
        elif r < 0.75:
            docs.append(everyday_doc(rng))
        else:
            docs.append(vocabulary_doc(rng))
    return docs


# --------------------------------------------------------------------------------------------------------------
# Instructions (all general; the same phrasing styles as the finance chat questions)

TOWN_QUESTIONS = {
    "所在地": ["{n}の所在地はどこですか？", "{n}はどこにありますか？"],
    "人口": ["{n}の人口は何人ですか？", "{n}の人口を教えてください。"],
    "名物": ["{n}の名物は何ですか？", "{n}の名物を教えてください。"],
    "祭り": ["{n}の祭りは何ですか？", "{n}で開かれる祭りは何ですか？"],
    "主な特産品": ["{n}の主な特産品は何ですか？", "{n}の主な特産品を教えてください。"],
    "主な産業": ["{n}の主な産業は何ですか？", "{n}の主な産業を教えてください。"],
    "主な課題": ["{n}の主な課題は何ですか？", "{n}が抱える主な課題は何ですか？"],
    "首長": ["{n}の{h}は誰ですか？", "{n}の{h}を教えてください。"],
    "設置年": ["{n}の設置年はいつですか？", "{n}の設置年を教えてください。"],
    "友好交流先": ["{n}の友好交流先はどこですか？", "{n}の友好交流先を教えてください。"],
}
# The general held-out probe asks these (one question each, the first phrasing), parallel to the finance chat
# questions: a place, a person, a year, a country and a pair of things.
PROBE_ATTRIBUTES = ["所在地", "首長", "設置年", "友好交流先", "主な特産品"]


def town_question(t: dict, attr: str, k: int = 0) -> tuple[str, str, str]:
    """(question, the fact's attribute name, the fact sentence) for ``attr`` of town ``t``."""
    name = t["head_title"] if attr == "首長" else attr
    q = TOWN_QUESTIONS[attr][k].format(n=t["name"], h=t["head_title"])
    return q, name, town_facts(t)[name]


def _answer(text: str) -> str:
    return ANSWER_PREFIX + text.replace("\n", "")


def _town_qa(t: dict, rng: random.Random) -> tuple[str, str]:
    attr = pick(rng, list(TOWN_QUESTIONS))
    q, _, fact = town_question(t, attr, rng.randrange(len(TOWN_QUESTIONS[attr])))
    return q, _answer(fact)


def _paraphrase_qa(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.5:
        subj = pick(
            rng, ["今日", "この部屋", "駅前の公園", "昨日の映画", "新しい図書館", "この料理", "今朝の海"]
        )
        adj = pick(rng, V.ADJECTIVES)
        plain = f"{subj}は{adj}。"
        polite = f"{subj}は{adj[:-1] if adj.endswith('だ') else adj}です。"
    else:
        person = pick(rng, V.PEOPLE)
        plain_v, polite_v = pick(rng, V.VERBS)
        obj = {
            "行く": f"{pick(rng, V.PLACES)['hq']}へ",
            "食べる": f"{pick(rng, V.FOODS)}を",
            "読む": "新聞を",
            "書く": "手紙を",
            "見る": "映画を",
            "買う": f"{pick(rng, V.FRUITS)}を",
            "作る": f"{pick(rng, V.FOODS)}を",
            "話す": "旅行の思い出を",
            "歩く": "川沿いの道を",
            "待つ": "駅でバスを",
        }[plain_v]
        plain = f"{person}は{obj}{plain_v}。"
        polite = f"{person}は{obj}{polite_v}。"
    q = pick(
        rng,
        [
            "次の文を丁寧な言い方に言い換えてください：{s}",
            "次の文を「です・ます」の形に書き換えてください：{s}",
        ],
    )
    return q.format(s=plain), _answer(polite)


def _summary_qa(t: dict, rng: random.Random) -> tuple[str, str]:
    n = t["name"]
    variants = [
        (
            f"{n}では毎年{t['festival_season']}に{t['festival']}が開かれ、町の内外から多くの人が集まって大いににぎわいます。",
            f"{n}では{t['festival_season']}に{t['festival']}が開かれます。",
        ),
        (
            f"{n}は{t['geo']}にある町で、昔から{t['industry']}が盛んであり、今も多くの住民がその仕事に携わっています。",
            f"{n}では{t['industry']}が盛んです。",
        ),
        (
            f"{n}を訪れた人の多くは、名物の{t['food']}を味わい、その素朴な味をなつかしく思い出すそうです。",
            f"{n}の名物は{t['food']}です。",
        ),
    ]
    long, short = pick(rng, variants)
    q = pick(rng, ["次の文章を短く要約してください：{s}", "次の文章を一文で要約してください：{s}"])
    return q.format(s=long), _answer(short)


def _classify_qa(rng: random.Random) -> tuple[str, str]:
    r = rng.random()
    if r < 0.6:
        cat = pick(rng, ["果物", "野菜", "動物"])
        word = pick(rng, {"果物": V.FRUITS, "野菜": V.VEGETABLES, "動物": V.ANIMALS}[cat])
        if cat == "果物" and word in V.VEGETABLES:
            cat = "野菜"
        q = f"次の言葉は果物、野菜、動物のどれですか：{word}"
        return q, _answer(f"{word}は{cat}です。")
    good = [
        "友だちと食べたお弁当がとてもおいしかった。",
        "今日は天気がよく、散歩が気持ちよかった。",
        "テストで満点を取ってうれしかった。",
        "旅先で親切な人に道を教えてもらった。",
    ]
    bad = [
        "雨で楽しみにしていた遠足が中止になった。",
        "電車が遅れて約束の時間に間に合わなかった。",
        "大切な傘をなくしてしまった。",
        "風邪をひいて一日中寝ていた。",
    ]
    if rng.random() < 0.5:
        return f"次の文は良い内容ですか、悪い内容ですか：{pick(rng, good)}", _answer("良い内容です。")
    return f"次の文は良い内容ですか、悪い内容ですか：{pick(rng, bad)}", _answer("悪い内容です。")


def _arith_qa(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(2, 50), rng.randint(2, 50)
    op = pick(rng, ["足す", "引く", "掛ける"])
    if op == "足す":
        return f"{a}に{b}を足すといくつですか？", _answer(f"{a}に{b}を足すと{a + b}です。")
    if op == "引く":
        a, b = max(a, b), min(a, b)
        return f"{a}から{b}を引くといくつですか？", _answer(f"{a}から{b}を引くと{a - b}です。")
    a, b = a % 12 + 1, b % 12 + 1
    return f"{a}と{b}を掛けるといくつですか？", _answer(f"{a}と{b}を掛けると{a * b}です。")


def _term_qa(rng: random.Random) -> tuple[str, str]:
    term = pick(rng, sorted(V.RISK_DEFINITIONS))
    return f"{term}とは何ですか？", _answer(f"{term}とは{V.RISK_DEFINITIONS[term]}です。")


def instructions(n: int, towns: list[dict], rng: random.Random) -> list[dict]:
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.45 and towns:
            q, a = _town_qa(pick(rng, towns), rng)
        elif r < 0.57:
            q, a = _paraphrase_qa(rng)
        elif r < 0.69 and towns:
            q, a = _summary_qa(pick(rng, towns), rng)
        elif r < 0.81:
            q, a = _classify_qa(rng)
        elif r < 0.93:
            q, a = _arith_qa(rng)
        else:
            q, a = _term_qa(rng)
        out.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    return out
