"""Make a Hugging Face model folder an MLflow model in place: weights stored once, read by stock MLflow.

Layout (written by :func:`write_mlflow_model` into the folder *before* it is committed, so the files are in
the folder's manifest and its digest)::

    <folder>/config.json, model*.safetensors, tokenizer*, chat_template.jinja …   the HF model, unchanged
    <folder>/MLmodel                       flavors ``transformers`` (model_binary ".") and ``python_function``
    <folder>/components/tokenizer/…        a copy of the tokenizer files (kilobytes to a few MB, no weights)
    <folder>/requirements.txt, python_env.yaml, conda.yaml                       the environment MLflow records

Why this layout stores the weights once: a registered version's ``source`` is the folder itself (local path or
``s3://`` prefix in finmerge's bucket); nothing is copied into MLflow's artifact store. ``models:/<name>@<alias>``
resolves to that source, MLflow downloads the folder and its transformers flavor loads the model from
``<folder>/.`` (``model_binary: "."``), i.e. the very files ``AutoModelForCausalLM.from_pretrained(folder)``
reads. Only the tokenizer is duplicated, because the flavor always reads components from
``components/<name>``. The alternative, a separate small MLflow model that references the weights folder, is
not possible with the stock flavor (it loads weights from inside the downloaded model, or from the HF Hub).

Why at creation time: finmerge folders are committed with a manifest whose digest registration records and
promotion, rollback and ``models:/`` loading verify; a file added afterwards would be refused as foreign.
The files are deterministic (no timestamp, no uuid), so the folder's digest still depends on its content only.

Safety: the model and tokenizer classes are the Auto classes, so MLflow never sets ``trust_remote_code``
(a folder with ``auto_map`` custom code does not load through MLflow; finmerge refuses it by default too).
The pyfunc task is MLflow's chat schema (``llm/v1/chat``: ``{"messages": [...]}`` → ``choices[0].message``)
when the folder has a chat template, else completions (``llm/v1/completions``: ``{"prompt": ...}``).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

MLMODEL = "MLmodel"
TOKENIZER_DIR = "components/tokenizer"
ENV_FILES = ("requirements.txt", "python_env.yaml", "conda.yaml")
CHAT_TASK, COMPLETIONS_TASK = "llm/v1/chat", "llm/v1/completions"
# What a tokenizer is made of; a chat template is part of it (transformers saves it beside the tokenizer).
_TOKENIZER_NAMES = {
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "tokenizer.model", "vocab.json", "vocab.txt", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
    "chat_template.jinja", "chat_template.json", "config.json",
}  # fmt: skip
_TOKENIZER_SUFFIXES = (".tiktoken",)
_REQUIREMENTS = ("mlflow", "transformers", "torch", "accelerate", "safetensors", "tokenizers")


def has_chat_template(folder: Path) -> bool:
    """Does the folder's tokenizer carry a chat template (in tokenizer_config.json or a template file)?"""
    if (folder / "chat_template.jinja").exists() or (folder / "chat_template.json").exists():
        return True
    tc = folder / "tokenizer_config.json"
    return tc.exists() and bool(json.loads(tc.read_text(encoding="utf-8")).get("chat_template"))


def _copy_tokenizer(folder: Path) -> list[str]:
    dest = folder / TOKENIZER_DIR
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and (p.name in _TOKENIZER_NAMES or p.name.endswith(_TOKENIZER_SUFFIXES)):
            shutil.copy2(p, dest / p.name)
            copied.append(p.name)
    if (folder / "additional_chat_templates").is_dir():
        shutil.copytree(folder / "additional_chat_templates", dest / "additional_chat_templates")
    return copied


def _torch_dtype(config: dict) -> str | None:
    text = config.get("text_config") if "vocab_size" not in config else None
    dtype = config.get("dtype") or config.get("torch_dtype") or (text or {}).get("dtype")
    return f"torch.{dtype}" if isinstance(dtype, str) and dtype != "auto" else None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in _REQUIREMENTS:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


# MLflow's signature of each LLM inference task, as the installed MLflow writes it, stored with the finmerge
# package: computing it imports mlflow.transformers (seconds, on every merge). tests/test_mlflow_model.py
# checks it against the installed MLflow; another MLflow version computes its own.
SIGNATURES_FILE = Path(__file__).with_name("mlflow_signatures.json")


def llm_signature(task: str, mlflow_version: str) -> dict:
    stored = json.loads(SIGNATURES_FILE.read_text(encoding="utf-8"))
    if stored["mlflow_version"] == mlflow_version and task in stored["signatures"]:
        return stored["signatures"][task]
    from mlflow.transformers.llm_inference_utils import infer_signature_from_llm_inference_task

    return infer_signature_from_llm_inference_task(task).to_dict()


def mlmodel_dict(folder: Path, task: str, versions: dict[str, str]) -> dict:
    """The MLmodel content for ``folder`` (what ``mlflow.transformers.save_model`` writes, minus the
    per-save uuid and time, with the weights read from the folder root)."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    transformers_flavor = {
        "task": "text-generation",
        "inference_task": task,
        "instance_type": "TextGenerationPipeline",
        "pipeline_model_type": "AutoModelForCausalLM",  # an Auto class: MLflow never trusts remote code
        "model_binary": ".",  # the HF folder itself: the weights are not copied
        "components": ["tokenizer"],
        "tokenizer_type": "AutoTokenizer",
        "transformers_version": versions.get("transformers", ""),
        "code": None,
    }
    if dtype := _torch_dtype(config):
        transformers_flavor["torch_dtype"] = dtype
    pyfunc = {
        "loader_module": "mlflow.transformers",
        "python_version": ".".join(map(str, sys.version_info[:3])),
        "env": {"conda": "conda.yaml", "virtualenv": "python_env.yaml"},
    }
    signature = llm_signature(task, versions.get("mlflow", ""))
    return {
        "flavors": {"python_function": pyfunc, "transformers": transformers_flavor},
        "metadata": {"task": task, "finmerge.layout": "weights in the model folder (model_binary '.')"},
        "mlflow_version": versions.get("mlflow", ""),
        "signature": signature,
    }


def _env_files(versions: dict[str, str]) -> dict[str, str]:
    import yaml

    reqs = [f"{name}=={v}" for name, v in versions.items()]
    py = ".".join(map(str, sys.version_info[:3]))
    python_env = {"python": py, "build_dependencies": ["pip"], "dependencies": ["-r requirements.txt"]}
    conda = {
        "name": "mlflow-env",
        "channels": ["conda-forge"],
        "dependencies": [f"python={py}", "pip", {"pip": reqs}],
    }
    return {
        "requirements.txt": "\n".join(reqs) + "\n",
        "python_env.yaml": yaml.safe_dump(python_env, sort_keys=False),
        "conda.yaml": yaml.safe_dump(conda, sort_keys=False),
    }


def write_mlflow_model(folder: Path) -> list[str]:
    """Write MLmodel, the tokenizer component and the environment files into the HF model ``folder`` (not
    yet committed); returns the names written. A folder with no tokenizer is left alone (no MLflow model)."""
    import yaml

    folder = Path(folder)
    if not (folder / "tokenizer_config.json").exists() and not (folder / "tokenizer.json").exists():
        return []
    task = CHAT_TASK if has_chat_template(folder) else COMPLETIONS_TASK
    versions = _versions()
    written = [f"{TOKENIZER_DIR}/{name}" for name in _copy_tokenizer(folder)]
    for name, text in _env_files(versions).items():
        (folder / name).write_text(text, encoding="utf-8")
        written.append(name)
    mlmodel = yaml.safe_dump(mlmodel_dict(folder, task, versions), sort_keys=True, allow_unicode=True)
    (folder / MLMODEL).write_text(mlmodel, encoding="utf-8")
    return [MLMODEL, *written]


def is_mlflow_model(folder_files) -> bool:
    """Does a folder (its manifest's file names) hold an MLflow model written by :func:`write_mlflow_model`?"""
    return MLMODEL in set(folder_files)
