"""Preflight for base / instruct / domain (CPT) model triplets, from config.json and safetensors headers only.

:func:`load_triplet` reads no tensor data. It checks architecture fields, tensor names, shapes and dtypes, and
the vocab policy, collects *every* problem, and raises one :class:`PreflightError` listing them all, so a bad
input is reported before any compute, download of more data, or write.

Vocab policy (method.md §4): the instruct model must share the base vocab; the domain model may extend it
(``V_domain >= V_base``, its tokenizer keeping every base token at the same id). The output vocab is the domain
model's, so no row is ever dropped; rows ``[V_base, V_domain)`` exist only in the domain model and are taken
from it unchanged. ``policy="shared"`` (used by the analysis) only restricts every vocab tensor to the rows all
three models have, and refuses nothing about vocab.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from finmerge import modelio
from finmerge.safetensors_stream import SafetensorsModel, TensorInfo

ROLES = ("base", "instruct", "domain")

# Architecture fields that must agree; each with the aliases some model families use.
CONFIG_FIELDS: dict[str, tuple[str, ...]] = {
    "model_type": ("model_type",),
    "architectures": ("architectures",),
    "hidden_size": ("hidden_size", "n_embd", "d_model"),
    "num_hidden_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "num_attention_heads": ("num_attention_heads", "n_head"),
    "num_key_value_heads": ("num_key_value_heads",),
    "intermediate_size": ("intermediate_size",),
    "tie_word_embeddings": ("tie_word_embeddings",),
}


class PreflightError(ValueError):
    """The inputs cannot be merged; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) with the merge inputs:\n{lines}")


def config_get(config: dict, keys: tuple[str, ...]):
    for src in (config, config.get("text_config") or {}):
        for k in keys:
            if k in src:
                return src[k]
    return None


def tokenizer_vocab(folder: Path) -> dict[str, int] | None:
    """token -> id from ``tokenizer.json`` (model vocab plus added tokens), or None when there is none."""
    path = Path(folder) / "tokenizer.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    vocab = (data.get("model") or {}).get("vocab")
    out: dict[str, int] = {}
    if isinstance(vocab, dict):
        out.update(vocab)
    elif isinstance(vocab, list):  # Unigram: [[piece, score], ...]
        out.update({entry[0]: i for i, entry in enumerate(vocab)})
    for tok in data.get("added_tokens") or []:
        out[tok["content"]] = tok["id"]
    return out


@dataclass
class Side:
    role: str
    uri: str
    folder: Path
    config: dict
    weights: SafetensorsModel

    @property
    def vocab_size(self) -> int | None:
        v = config_get(self.config, ("vocab_size", "padded_vocab_size"))
        return int(v) if v is not None else None


@dataclass
class Triplet:
    base: Side
    instruct: Side
    domain: Side
    names: list[str]
    # Tensors whose axis 0 is the vocab and differs between the models: name -> rows shared by all three.
    vocab_rows: dict[str, int]
    vocab: dict
    warnings: list[str] = field(default_factory=list)

    def sides(self) -> tuple[Side, Side, Side]:
        return self.base, self.instruct, self.domain

    def info(self, role: str, name: str) -> TensorInfo:
        return getattr(self, role).weights.tensors[name]


def _load_side(role: str, uri: str, folder: Path, problems: list[str]) -> Side | None:
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        problems.append(f"{role} ({uri}): unreadable config.json ({exc})")
        return None
    try:
        weights = SafetensorsModel(folder)
    except modelio.ModelFormatError as exc:
        problems.append(f"{role} ({uri}): {exc}")
        return None
    return Side(role, uri, Path(folder), config, weights)


def load_triplet(
    uris: dict[str, str],
    folders: dict[str, Path],
    *,
    policy: Literal["merge", "shared"] = "merge",
    allow_float_dtype_mismatch: bool = False,
    trust_remote_code: bool = False,
) -> Triplet:
    """Inspect and cross-check the three models; raise :class:`PreflightError` listing every problem."""
    problems: list[str] = []
    sides = {r: _load_side(r, uris[r], folders[r], problems) for r in ROLES}
    if any(s is None for s in sides.values()):
        raise PreflightError(problems)
    base, inst, dom = (sides[r] for r in ROLES)

    # -- architecture ----------------------------------------------------------------------------------
    for fld, keys in CONFIG_FIELDS.items():
        vals = {r: config_get(s.config, keys) for r, s in sides.items()}
        if len({json.dumps(v, sort_keys=True) for v in vals.values()}) > 1:
            problems.append(f"config {fld} differs: " + ", ".join(f"{r}={v!r}" for r, v in vals.items()))
    if not trust_remote_code:
        for r, s in sides.items():
            if s.config.get("auto_map"):
                problems.append(
                    f"{r}: config.json has auto_map (custom modelling code); pass trust_remote_code=True to allow it"
                )

    # -- tensors ---------------------------------------------------------------------------------------
    vsize = {r: s.vocab_size for r, s in sides.items()}
    all_names = set().union(*(s.weights.tensors for s in sides.values()))
    vocab_rows: dict[str, int] = {}
    for name in sorted(all_names):
        missing = [r for r, s in sides.items() if name not in s.weights.tensors]
        if missing:
            have = [r for r in ROLES if r not in missing]
            problems.append(f"tensor {name}: missing in {', '.join(missing)} (present in {', '.join(have)})")
            continue
        infos = {r: s.weights.tensors[name] for r, s in sides.items()}
        for r, i in infos.items():
            if i.torch_dtype is None:
                problems.append(f"tensor {name}: unsupported dtype {i.dtype} in {r}")
        dtypes = {i.dtype for i in infos.values()}
        if len(dtypes) > 1 and not (allow_float_dtype_mismatch and all(i.is_float for i in infos.values())):
            problems.append(
                f"tensor {name}: dtype differs: " + ", ".join(f"{r}={i.dtype}" for r, i in infos.items())
            )
        shapes = {r: i.shape for r, i in infos.items()}
        if len(set(shapes.values())) == 1:
            continue
        same_tail = len({(len(s), s[1:]) for s in shapes.values()}) == 1 and all(
            len(s) >= 1 for s in shapes.values()
        )
        on_vocab = same_tail and all(vsize[r] is not None and shapes[r][0] == vsize[r] for r in ROLES)
        if on_vocab and all(i.is_float for i in infos.values()):
            vocab_rows[name] = min(s[0] for s in shapes.values())
        else:
            problems.append(
                f"tensor {name}: shape differs: " + ", ".join(f"{r}={list(s)}" for r, s in shapes.items())
            )

    # -- vocab -----------------------------------------------------------------------------------------
    warnings: list[str] = []
    vocab = {"base": vsize["base"], "instruct": vsize["instruct"], "domain": vsize["domain"]}
    if vocab_rows or len(set(vsize.values())) > 1:
        if policy == "merge":
            vb, vi, vd = vsize["base"], vsize["instruct"], vsize["domain"]
            if vi != vb:
                problems.append(
                    f"vocab: instruct vocab_size {vi} differs from base {vb}; the instruction vector needs the "
                    "base's vocab (instruct-only token rows cannot be placed next to the domain's extension)"
                )
            if vd is not None and vb is not None and vd < vb:
                problems.append(
                    f"vocab: domain vocab_size {vd} is smaller than base {vb}; the merge would drop rows (refused)"
                )
            elif vd is not None and vb is not None and vd > vb:
                tb, td = tokenizer_vocab(base.folder), tokenizer_vocab(dom.folder)
                if tb is None or td is None:
                    warnings.append(
                        "vocab: no tokenizer.json to verify that the domain tokenizer extends the base's"
                    )
                else:
                    moved = [t for t, i in tb.items() if td.get(t) != i]
                    if moved:
                        problems.append(
                            f"vocab: the domain tokenizer does not extend the base's: {len(moved)} base token(s) "
                            f"missing or at another id (e.g. {moved[:5]!r})"
                        )
        vocab["shared"] = min(v for v in vsize.values() if v is not None) if any(vsize.values()) else None
    else:
        vocab["shared"] = vsize["base"]
    vocab["output"] = vsize["domain"]
    vocab["rows_domain_only"] = max(0, (vsize["domain"] or 0) - (vocab["shared"] or 0))

    ti, td = tokenizer_vocab(inst.folder), tokenizer_vocab(dom.folder)
    if ti is not None and td is not None:
        lost = [t for t, i in ti.items() if td.get(t) != i]
        if lost:
            warnings.append(
                f"tokenizer: {len(lost)} instruct token(s) missing or at another id in the domain tokenizer "
                f"(e.g. {lost[:5]!r}); a chat template using them may break"
            )

    if problems:
        raise PreflightError(problems)
    names = sorted(all_names)
    return Triplet(base, inst, dom, names, vocab_rows, vocab, warnings)
