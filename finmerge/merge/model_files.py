"""The non-weight files of a merged model: config, tokenizer (domain), chat template and generation config
(instruct), custom code; and the check, before any work, that the domain model's tokenizer loads."""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path

from finmerge.merge.stream import MergeError, dtype_name
from finmerge.merge.triplet import Triplet
from finmerge.models.mlflow_model import write_mlflow_model

# Tokenizer files taken from the domain model (it may extend the vocab); chat templates come from instruct.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
TOKENIZER_PATTERNS = ("*.tiktoken", "tokenizer*.model", "tokenization_*.py")
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


def check_tokenizer_source(folder: Path, uri: str, trust_remote_code: bool) -> None:
    """The merged model takes the domain model's tokenizer: refuse before any work when it has none that
    transformers can load, rather than write a model nobody can evaluate.

    Synchronous on purpose: importing transformers in a thread beside the merge pass was measured slower
    (the import holds the GIL that the pass needs between its kernel calls)."""
    vocab_files = {"tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model"}  # fmt: skip
    names = [p.name for p in folder.iterdir()]
    if not any(n in vocab_files or fnmatch.fnmatch(n, "*.tiktoken") for n in names):
        raise MergeError(
            f"{uri}: the domain model has no tokenizer files (tokenizer.json, tokenizer.model, vocab.json …); "
            "the merged model takes its tokenizer from it. Copy the tokenizer of the model it was trained from"
        )
    try:
        if not _loads_with_tokenizers(folder):
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise MergeError(
            f"{uri}: the domain model's tokenizer does not load ({type(exc).__name__}: {exc})"
        ) from exc


# Classes that transformers builds from tokenizer.json alone (v4 names are aliases in v5).
_FAST_CLASSES = {None, "PreTrainedTokenizerFast", "TokenizersBackend"}


def _loads_with_tokenizers(folder: Path) -> bool:
    """True when the tokenizer is a plain ``tokenizer.json`` (plus JSON configs) and it parses.

    Importing transformers to call AutoTokenizer costs about 2 s of a merge command's ~3–10 s, while the
    ``tokenizers`` library that AutoTokenizer would use for such a folder loads in milliseconds. Anything
    else (custom code, a sentencepiece-only folder, an unknown class) goes through AutoTokenizer."""
    if not (folder / "tokenizer.json").is_file():
        return False
    configs = {
        name: json.loads((folder / name).read_text(encoding="utf-8"))
        for name in ("tokenizer_config.json", "special_tokens_map.json")
        if (folder / name).is_file()
    }
    for name, loaded in configs.items():
        if not isinstance(loaded, dict):
            raise ValueError(f"{name} is not a JSON object")
    config = configs.get("tokenizer_config.json", {})
    cls = config.get("tokenizer_class")
    if config.get("auto_map") or not (cls in _FAST_CLASSES or str(cls).endswith("TokenizerFast")):
        return False
    from tokenizers import Tokenizer

    Tokenizer.from_file(str(folder / "tokenizer.json"))
    return True


def _copy_matching(src: Path, dst: Path, names, patterns) -> list[str]:
    copied = []
    for p in sorted(src.iterdir()):
        if p.is_file() and (p.name in names or any(fnmatch.fnmatch(p.name, pat) for pat in patterns)):
            shutil.copy2(p, dst / p.name)
            copied.append(p.name)
    return copied


def write_model_files(tri: Triplet, out: Path, out_dtype, trust_remote_code: bool) -> list[str]:
    """config.json, generation config, tokenizer (domain) + chat template (instruct), custom code, and the
    MLflow model files that make the folder loadable by stock MLflow (:mod:`finmerge.models.mlflow_model`)."""
    warnings: list[str] = []
    inst, dom = tri.instruct.folder, tri.domain.folder

    config = json.loads((inst / "config.json").read_text(encoding="utf-8"))
    target = config["text_config"] if "vocab_size" not in config and "text_config" in config else config
    if tri.vocab["output"] is not None:
        target["vocab_size"] = int(tri.vocab["output"])
    config["dtype"] = dtype_name(out_dtype)
    if "torch_dtype" in config:
        config["torch_dtype"] = dtype_name(out_dtype)

    if trust_remote_code and config.get("auto_map"):
        _copy_matching(inst, out, (), ("*.py",))
    _copy_matching(dom, out, TOKENIZER_FILES, TOKENIZER_PATTERNS)
    (out / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")

    if (inst / "generation_config.json").exists():
        shutil.copy2(inst / "generation_config.json", out / "generation_config.json")
    else:
        warnings.append("instruct model has no generation_config.json; none written")

    # Chat template: the instruct model's, never the domain's.
    found = False
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text(encoding="utf-8")) if tc_path.exists() else None
    if tc is not None:
        tc.pop("chat_template", None)
    inst_tc_path = inst / "tokenizer_config.json"
    if inst_tc_path.exists():
        inst_tc = json.loads(inst_tc_path.read_text(encoding="utf-8"))
        if inst_tc.get("chat_template"):
            found = True
            if tc is None:
                tc = {}
            tc["chat_template"] = inst_tc["chat_template"]
    if tc is not None:
        tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for fname in CHAT_TEMPLATE_FILES:
        if (inst / fname).exists():
            shutil.copy2(inst / fname, out / fname)
            found = True
    if (inst / "additional_chat_templates").is_dir():
        shutil.copytree(inst / "additional_chat_templates", out / "additional_chat_templates")
        found = True
    if not found:
        warnings.append("instruct model has no chat template; the merged model has none")
    if not (out / "tokenizer_config.json").exists() and not (out / "tokenizer.json").exists():
        warnings.append("domain model has no tokenizer files")
    if not write_mlflow_model(out):  # last: it copies the tokenizer and chat template written above
        warnings.append("no tokenizer: the folder is not an MLflow model")
    return warnings
