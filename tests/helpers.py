"""Tiny models and corpora made locally for tests (nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

from finmerge.config import TinyModelConfig
from finmerge.core import storage
from finmerge.demo.chat import CHAT_TEMPLATE
from finmerge.demo.models import init_llama, save_model, train_tokenizer

TEXTS = [
    "株式会社青葉精機の主な事業は精密機械の製造です。本社所在地は愛知県名古屋市です。",
    "桜井町の名物はうどんです。毎年八月には夏祭りが開かれます。",
    "当社の売上高は前期比で増加しました。営業利益も堅調に推移しています。",
    "今日は晴れです。明日は雨が降るでしょう。",
] * 30

TINY = TinyModelConfig(
    vocab_size=400,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=128,
)

# TINY's layers with room for longer prompts (harness and judge tests; init_llama takes the vocabulary size
# from the tokenizer)
TINY_512 = TINY.model_copy(update={"max_position_embeddings": 512})


def tiny_model(folder: Path, seed: int = 0, chat: bool = False, shape: TinyModelConfig = TINY) -> Path:
    """A committed (manifest-bearing) tiny Llama folder with a trained BPE tokenizer."""
    tok = train_tokenizer(
        iter(TEXTS), shape.vocab_size, folder.parent / f".tok-{folder.name}", CHAT_TEMPLATE if chat else None
    )
    model = init_llama(shape, tok, seed)
    with storage.output_folder(str(folder), str(folder.parent / ".staging")) as out:
        save_model(model, tok, out.path, "# tiny test model")
    return folder


def write_corpus(folder: Path, texts: list[str]) -> str:
    import json

    with storage.output_folder(str(folder), str(folder.parent / ".staging")) as out:
        with open(out.path / "docs.jsonl", "w", encoding="utf-8") as fh:
            for i, t in enumerate(texts):
                fh.write(json.dumps({"id": str(i), "text": t}, ensure_ascii=False) + "\n")
    return str(folder)


def run_bench(script: str, *args: str) -> dict:
    """Run ``bench/<script>`` as its own process; it must print exactly one JSON line."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, str(root / "bench" / script), *args],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=300,
        check=True,
    )
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, out.stdout
    return json.loads(lines[0])


def tiny_tokens(base: Path, folder: Path, texts: list[str] = TEXTS, seq_len: int = 16) -> dict:
    """``texts`` written as a corpus under ``folder`` and packed with ``base``'s tokenizer into blocks of
    ``seq_len`` tokens (the tokenize stage's result: ``uri``, counts)."""
    from finmerge.config import TokenizeConfig
    from finmerge.train.tokenize import tokenize_corpus

    corpus = write_corpus(folder / "corpus", texts)
    return tokenize_corpus(
        corpus, str(base), str(folder / "tok"), TokenizeConfig(seq_len=seq_len), str(folder / "st")
    )


def with_bad_value(
    src: Path | str, out: Path, suffix: str, value: float, at: tuple[int, int]
) -> tuple[Path, str]:
    """A copy of model folder ``src`` at ``out`` whose first tensor named ``*suffix`` holds ``value`` at ``at``;
    returns the folder and the tensor's name."""
    from safetensors.torch import load_file, save_file

    out.mkdir()
    for p in Path(src).iterdir():
        (out / p.name).write_bytes(p.read_bytes())
    (w,) = out.glob("*.safetensors")
    t = load_file(w)
    name = next(k for k in sorted(t) if k.endswith(suffix))
    t[name][at] = value
    save_file(t, str(w), metadata={"format": "pt"})
    return out, name
