"""Word pools of the demo world: fictional company names, industries, places, towns and everyday topics.

Everything here is invented for the demo. Places (都道府県+市区) are real Japanese place names, used only as
locations of fictional companies and in generic sentences; no real company is described.
"""

from __future__ import annotations

# Company-name prefixes (2 kanji) with a romanisation for the e-mail domain and the English name.
COMPANY_PREFIXES: list[tuple[str, str]] = [
    ("山田", "yamada"),
    ("青葉", "aoba"),
    ("桜井", "sakurai"),
    ("北斗", "hokuto"),
    ("東雲", "shinonome"),
    ("若葉", "wakaba"),
    ("白樺", "shirakaba"),
    ("松風", "matsukaze"),
    ("高砂", "takasago"),
    ("緑川", "midorikawa"),
    ("千歳", "chitose"),
    ("光陽", "koyo"),
    ("翠星", "suisei"),
    ("朝霧", "asagiri"),
    ("紅葉", "momiji"),
    ("銀河", "ginga"),
    ("月岡", "tsukioka"),
    ("星野", "hoshino"),
    ("秋山", "akiyama"),
    ("春日", "kasuga"),
    ("夏目", "natsume"),
    ("冬木", "fuyuki"),
    ("雪村", "yukimura"),
    ("花岡", "hanaoka"),
    ("風間", "kazama"),
    ("雲海", "unkai"),
    ("岩城", "iwaki"),
    ("谷口", "taniguchi"),
    ("早瀬", "hayase"),
    ("杉浦", "sugiura"),
    ("竹内", "takeuchi"),
    ("立花", "tachibana"),
    ("柏木", "kashiwagi"),
    ("藤森", "fujimori"),
    ("菊池", "kikuchi"),
    ("宮坂", "miyasaka"),
    ("若松", "wakamatsu"),
    ("鳴海", "narumi"),
    ("彩雲", "saiun"),
    ("蒼天", "soten"),
    ("鳳凰", "hoo"),
    ("黎明", "reimei"),
    ("久遠", "kuon"),
    ("暁星", "gyosei"),
    ("清流", "seiryu"),
    ("天城", "amagi"),
    ("音羽", "otowa"),
    ("葛城", "katsuragi"),
]
# More prefixes, composed (2 kanji, on-yomi-like romanisation): the evaluated and the background companies
# each get prefixes of their own, so no evaluated company shares a name stem with one the base model read.
_PREFIX_HEADS = [("東", "to"), ("西", "sai"), ("南", "nan"), ("北", "hoku"), ("中", "chu"), ("新", "shin"),
                 ("大", "dai"), ("高", "taka"), ("日", "nichi"), ("富", "fu"), ("昭", "sho"), ("協", "kyo"),
                 ("三", "san"), ("丸", "maru"), ("平", "hei"), ("栄", "ei")]  # fmt: skip
_PREFIX_TAILS = [("和", "wa"), ("洋", "yo"), ("邦", "ho"), ("成", "sei"), ("信", "shin"), ("興", "ko"),
                 ("友", "yu"), ("亜", "a"), ("進", "shinpo"), ("盛", "mori")]  # fmt: skip
PREFIX_KANJI = (
    [h for h, _ in _PREFIX_HEADS],
    [t for t, _ in _PREFIX_TAILS],
)  # (heads, tails) of the composed ones
N_NAMED_PREFIXES = len(COMPANY_PREFIXES)  # the hand-picked ones; the composed ones (common kanji) follow
COMPANY_PREFIXES += [(h + t, hr + tr) for h, hr in _PREFIX_HEADS for t, tr in _PREFIX_TAILS]

# Industry: name suffix, romanised suffix, 主な事業, product pool, risk pool (all risks name real-world categories).
INDUSTRIES: list[dict] = [
    {
        "key": "machinery",
        "suffix": "精機",
        "suffix_en": "seiki",
        "business": "精密機械の製造",
        "products": ["工作機械", "測定機器", "産業用ロボット", "精密部品", "油圧機器"],
        "risks": ["為替変動", "原材料価格の高騰", "設備投資需要の変動", "人材の確保"],
        "customers": "自動車や電子機器のメーカー",
        "segments": ["機械事業", "部品事業"],
    },
    {
        "key": "pharma",
        "suffix": "製薬",
        "suffix_en": "pharma",
        "business": "医薬品の研究開発と製造",
        "products": ["抗生物質", "胃腸薬", "解熱鎮痛剤", "点眼薬", "ワクチン"],
        "risks": ["法規制の変更", "研究開発の不確実性", "薬価改定", "製造物責任"],
        "customers": "病院や薬局",
        "segments": ["医療用医薬品事業", "一般用医薬品事業"],
    },
    {
        "key": "food",
        "suffix": "食品",
        "suffix_en": "foods",
        "business": "加工食品の製造販売",
        "products": ["冷凍食品", "即席めん", "調味料", "菓子", "缶詰"],
        "risks": ["原材料価格の高騰", "食品の安全性", "天候不順", "為替変動"],
        "customers": "スーパーマーケットやコンビニエンスストア",
        "segments": ["家庭用食品事業", "業務用食品事業"],
    },
    {
        "key": "construction",
        "suffix": "建設",
        "suffix_en": "kensetsu",
        "business": "総合建設業",
        "products": ["集合住宅", "オフィスビル", "橋梁", "物流倉庫", "道路"],
        "risks": ["資材価格の高騰", "人材の確保", "自然災害", "公共投資の減少"],
        "customers": "官公庁や民間の発注者",
        "segments": ["建築事業", "土木事業"],
    },
    {
        "key": "logistics",
        "suffix": "物流",
        "suffix_en": "logistics",
        "business": "物流サービス",
        "products": ["倉庫保管サービス", "国際輸送サービス", "冷凍輸送", "宅配サービス", "引越しサービス"],
        "risks": ["燃料価格の高騰", "人材の確保", "自然災害", "法規制の変更"],
        "customers": "製造業や小売業の荷主",
        "segments": ["国内物流事業", "国際物流事業"],
    },
    {
        "key": "chemical",
        "suffix": "化学",
        "suffix_en": "chemical",
        "business": "化学品の製造",
        "products": ["合成樹脂", "塗料", "接着剤", "化学繊維", "半導体材料"],
        "risks": ["原材料価格の高騰", "環境規制の強化", "為替変動", "事故と災害"],
        "customers": "自動車や住宅関連のメーカー",
        "segments": ["基礎化学品事業", "機能材料事業"],
    },
    {
        "key": "electronics",
        "suffix": "電機",
        "suffix_en": "denki",
        "business": "電子部品の製造",
        "products": ["コンデンサ", "センサー", "コネクタ", "半導体素子", "電源装置"],
        "risks": ["為替変動", "半導体市況の変動", "技術革新", "原材料価格の高騰"],
        "customers": "通信機器や家電のメーカー",
        "segments": ["電子部品事業", "電源事業"],
    },
    {
        "key": "trading",
        "suffix": "商事",
        "suffix_en": "shoji",
        "business": "総合商社",
        "products": ["鉄鋼製品", "化学品", "食料品", "機械設備", "繊維製品"],
        "risks": ["為替変動", "商品市況の変動", "カントリーリスク", "取引先の信用リスク"],
        "customers": "国内外の取引先",
        "segments": ["資源事業", "生活産業事業"],
    },
    {
        "key": "software",
        "suffix": "システムズ",
        "suffix_en": "systems",
        "business": "情報システムの開発",
        "products": [
            "会計ソフトウェア",
            "クラウドサービス",
            "生産管理システム",
            "電子カルテ",
            "セキュリティソフト",
        ],
        "risks": ["情報セキュリティ", "人材の確保", "技術革新", "プロジェクトの採算悪化"],
        "customers": "金融機関や製造業の企業",
        "segments": ["システム開発事業", "クラウド事業"],
    },
    {
        "key": "realestate",
        "suffix": "不動産",
        "suffix_en": "fudosan",
        "business": "不動産の開発と賃貸",
        "products": ["分譲マンション", "賃貸オフィス", "商業施設", "物流施設", "ホテル"],
        "risks": ["金利の上昇", "不動産市況の変動", "自然災害", "法規制の変更"],
        "customers": "法人のテナントや個人の購入者",
        "segments": ["賃貸事業", "分譲事業"],
    },
]

# Headquarters: 都道府県+市区, with the 2-digit area code used in 0X-XXXX-XXXX phone numbers and a street.
PLACES: list[dict] = [
    {"hq": "東京都千代田区", "area": "03", "street": "丸の内二丁目{n}番{m}号"},
    {"hq": "東京都港区", "area": "03", "street": "芝浦三丁目{n}番{m}号"},
    {"hq": "大阪府大阪市", "area": "06", "street": "北区中之島四丁目{n}番{m}号"},
    {"hq": "愛知県名古屋市", "area": "05", "street": "中区栄三丁目{n}番{m}号"},
    {"hq": "神奈川県横浜市", "area": "04", "street": "西区みなとみらい二丁目{n}番{m}号"},
    {"hq": "福岡県福岡市", "area": "09", "street": "博多区博多駅前一丁目{n}番{m}号"},
    {"hq": "北海道札幌市", "area": "01", "street": "中央区北三条西四丁目{n}番{m}号"},
    {"hq": "宮城県仙台市", "area": "02", "street": "青葉区中央二丁目{n}番{m}号"},
    {"hq": "広島県広島市", "area": "08", "street": "中区紙屋町一丁目{n}番{m}号"},
    {"hq": "京都府京都市", "area": "07", "street": "下京区四条通{n}番{m}号"},
    {"hq": "兵庫県神戸市", "area": "07", "street": "中央区三宮町二丁目{n}番{m}号"},
    {"hq": "静岡県浜松市", "area": "05", "street": "中央区板屋町{n}番{m}号"},
]

SURNAMES = [
    "佐藤",
    "鈴木",
    "高橋",
    "田中",
    "伊藤",
    "渡辺",
    "中村",
    "小林",
    "加藤",
    "吉田",
    "山本",
    "松本",
    "井上",
    "木村",
    "林",
    "清水",
    "森",
    "池田",
    "橋本",
    "石川",
]
GIVEN_NAMES = [
    "健一",
    "誠",
    "浩二",
    "隆",
    "修",
    "大輔",
    "直樹",
    "美咲",
    "陽子",
    "恵子",
    "真理子",
    "和也",
    "拓也",
    "裕子",
    "智子",
    "正人",
    "亮",
    "聡",
    "由美",
    "達也",
]

OVERSEAS = ["タイ", "ベトナム", "アメリカ", "ドイツ", "中国", "インドネシア", "メキシコ", "インド"]
FACILITIES = ["工場", "研究所", "物流センター", "支店", "技術センター"]
MOTTOS = [
    "技術で社会に貢献する",
    "誠実な事業で信頼を築く",
    "お客様の期待を超える価値を届ける",
    "人と地球にやさしい企業をめざす",
    "挑戦を続け、未来をつくる",
    "品質と安全を何よりも大切にする",
    "地域とともに成長する",
    "新しい当たり前を生み出す",
]

# ---------------------------------------------------------------------------------------------------------------
# General (non-financial) world: fictional towns.

TOWN_HEADS = list("青白黒赤金銀緑春夏秋冬朝夕星月雪花風雲鶴亀桃梅竹松杉楓鈴虹霞")
TOWN_TAILS = list("川沢野原浜崎岡谷島森平台瀬浦里江見坂沼滝")
TOWN_PREFS = [
    "長野県",
    "新潟県",
    "岩手県",
    "熊本県",
    "鹿児島県",
    "岡山県",
    "秋田県",
    "山形県",
    "福島県",
    "栃木県",
    "群馬県",
    "富山県",
    "石川県",
    "福井県",
    "岐阜県",
    "三重県",
    "奈良県",
    "島根県",
    "高知県",
    "大分県",
]
TOWN_FOODS = [
    "味噌田楽",
    "鮎の塩焼き",
    "栗ようかん",
    "手打ちそば",
    "焼きまんじゅう",
    "牡蠣めし",
    "ほうとう",
    "笹だんご",
    "きりたんぽ",
    "鯛めし",
    "芋煮",
    "五平餅",
    "柿の葉寿司",
    "鮭の親子丼",
    "豆腐田楽",
    "山菜おこわ",
    "ういろう",
    "どら焼き",
    "湯葉料理",
    "うなぎの蒲焼き",
]
TOWN_FESTIVALS = [
    "灯籠祭り",
    "花火大会",
    "雪まつり",
    "桜まつり",
    "秋祭り",
    "竹灯り祭り",
    "火祭り",
    "太鼓祭り",
    "紅葉まつり",
    "港まつり",
]
FESTIVAL_SEASON = {
    "灯籠祭り": "夏",
    "花火大会": "夏",
    "雪まつり": "冬",
    "桜まつり": "春",
    "秋祭り": "秋",
    "竹灯り祭り": "秋",
    "火祭り": "夏",
    "太鼓祭り": "秋",
    "紅葉まつり": "秋",
    "港まつり": "夏",
}
TOWN_SPECIALTIES = [
    "りんご",
    "みかん",
    "お茶",
    "お米",
    "木工品",
    "和紙",
    "陶器",
    "漆器",
    "梨",
    "ぶどう",
    "椎茸",
    "蜂蜜",
    "牛乳",
    "海苔",
    "真珠",
    "竹細工",
    "織物",
    "日本酒",
    "わさび",
    "桃",
]
TOWN_INDUSTRIES = ["農業", "漁業", "林業", "観光業", "酪農", "窯業", "果樹栽培", "温泉観光"]
TOWN_ISSUES = [
    "人口減少",
    "高齢化",
    "交通の不便さ",
    "後継者不足",
    "空き家の増加",
    "観光客の減少",
    "自然災害への備え",
]
TOWN_GEO = ["山あい", "海沿い", "川沿い", "盆地", "高原", "湖のほとり", "田園地帯", "港のそば"]

# Everyday vocabulary.
FOODS = [
    "カレー",
    "肉じゃが",
    "味噌汁",
    "焼き魚",
    "おにぎり",
    "親子丼",
    "野菜炒め",
    "ハンバーグ",
    "うどん",
    "卵焼き",
]
INGREDIENTS = ["玉ねぎ", "にんじん", "じゃがいも", "キャベツ", "豆腐", "鶏肉", "豚肉", "卵", "ねぎ", "大根"]
FRUITS = ["りんご", "みかん", "ぶどう", "桃", "梨", "いちご", "バナナ", "メロン", "柿", "すいか"]
VEGETABLES = [
    "にんじん",
    "キャベツ",
    "大根",
    "ほうれん草",
    "きゅうり",
    "トマト",
    "なす",
    "ピーマン",
    "白菜",
    "ごぼう",
]
ANIMALS = ["犬", "猫", "うさぎ", "馬", "牛", "きつね", "たぬき", "ペンギン", "ぞう", "きりん"]
HOBBIES = ["読書", "料理", "写真", "山登り", "釣り", "将棋", "ピアノ", "園芸", "書道", "ジョギング"]
SUBJECTS = ["国語", "算数", "理科", "社会", "英語", "音楽", "図工", "体育"]
WEATHER = ["晴れ", "くもり", "雨", "雪"]
SEASONS = ["春", "夏", "秋", "冬"]
PEOPLE = ["兄", "姉", "弟", "妹", "父", "母", "祖父", "祖母", "友人", "先生"]
ADJECTIVES = [
    "寒い",
    "暑い",
    "楽しい",
    "静かだ",
    "にぎやかだ",
    "きれいだ",
    "おいしい",
    "難しい",
    "新しい",
    "大きい",
]
VERBS = [
    ("行く", "行きます"),
    ("食べる", "食べます"),
    ("読む", "読みます"),
    ("書く", "書きます"),
    ("見る", "見ます"),
    ("買う", "買います"),
    ("作る", "作ります"),
    ("話す", "話します"),
    ("歩く", "歩きます"),
    ("待つ", "待ちます"),
]

# Short general definitions of the finance vocabulary (no company is named).
RISK_DEFINITIONS = {
    "為替変動": "通貨の交換比率が変わること",
    "原材料価格の高騰": "製品の材料の値段が大きく上がること",
    "法規制の変更": "法律や規則の内容が変わること",
    "自然災害": "地震や台風などによる被害",
    "人材の確保": "必要な働き手を集めて育てること",
    "情報セキュリティ": "情報を不正な利用や漏えいから守ること",
    "技術革新": "新しい技術によって製品や仕組みが大きく変わること",
    "金利の上昇": "お金を借りるときの利息の割合が上がること",
    "天候不順": "雨や気温が平年と大きく違う状態が続くこと",
    "燃料価格の高騰": "ガソリンや軽油などの値段が大きく上がること",
}
