"""Preflight for base / instruct / domain (CPT) model triplets, from config.json and safetensors headers only.

:func:`load_triplet` reads no tensor data. It checks architecture fields, tensor names, shapes and dtypes (float
formats may differ between the models: each is upcast exactly; integer tensors may not), and
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

from finmerge.merge.method_registry import ROLES
from finmerge.models import loading as modelio
from finmerge.models.safetensors_stream import SafetensorsModel, TensorInfo

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


class MergeError(ValueError):
    """A problem found while merging (non-finite values, integer tensors that differ); nothing is committed."""


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


@dataclass(frozen=True)
class Tokens:
    """A tokenizer's ``token -> id`` (model vocab plus added tokens) and its added tokens by id."""

    ids: dict[str, int]
    added: dict[int, str]


def read_tokens(folder: Path) -> Tokens | None:
    """The tokens of ``tokenizer.json``, or None when there is none; an unreadable one is an error."""
    path = Path(folder) / "tokenizer.json"
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        vocab = (data.get("model") or {}).get("vocab")
        ids: dict[str, int] = {}
        if isinstance(vocab, dict):
            ids.update(vocab)
        elif isinstance(vocab, list):  # Unigram: [[piece, score], ...]
            ids.update({entry[0]: i for i, entry in enumerate(vocab)})
        added = {int(tok["id"]): tok["content"] for tok in data.get("added_tokens") or []}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError) as exc:
        raise modelio.ModelFormatError(f"{path}: unreadable tokenizer ({type(exc).__name__}: {exc})") from exc
    ids.update({content: i for i, content in added.items()})
    return Tokens(ids, added)


def tokenizer_vocab(folder: Path) -> dict[str, int] | None:
    """token -> id from ``tokenizer.json`` (model vocab plus added tokens), or None when there is none."""
    tokens = read_tokens(folder)
    return None if tokens is None else tokens.ids


def moved_tokens(ref: Tokens, other: Tokens, below: int | None = None) -> list[str]:
    """Tokens of ``ref`` (ids below ``below``) that ``other`` lacks or numbers differently. An added token
    that ``other`` renamed in place (another added token at the same id, e.g. a reserved token turned into a
    chat marker) keeps its row and is not counted."""
    moved = []
    for tok, i in ref.ids.items():
        if below is not None and i >= below:
            continue
        j = other.ids.get(tok)
        if j == i or (j is None and ref.added.get(i) == tok and i in other.added):
            continue
        moved.append(tok)
    return moved


@dataclass
class Side:
    role: str
    uri: str
    folder: Path
    config: dict
    weights: SafetensorsModel
    tokens: Tokens | None = None

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
        config = modelio.read_config(folder)
        weights = SafetensorsModel(folder)  # headers checked against the files: truncation shows here
        tokens = read_tokens(folder)
    except modelio.ModelFormatError as exc:
        problems.append(f"{role} ({uri}): {exc}")
        return None
    return Side(role, uri, Path(folder), config, weights, tokens)


def _token_id_problems(sides: dict, shared: int | None, extends: bool, warnings: list[str]) -> list[str]:
    """Row i of every vocab tensor must mean the same token in all three models: each base token keeps its
    id in the instruct and domain tokenizers (all of them when the domain extends the vocab, else those
    whose rows are combined). A tokenizer that renumbers them would merge unrelated embedding rows."""
    base = sides["base"].tokens
    if base is None:
        if any(s.tokens is not None for s in sides.values()):
            warnings.append("tokenizer: the base has no tokenizer.json; token ids not cross-checked")
        return []
    problems = []
    for role in ("instruct", "domain"):
        side = sides[role]
        if side.tokens is None:
            what = (
                "that the domain tokenizer extends the base's"
                if extends and role == "domain"
                else "token ids"
            )
            warnings.append(f"vocab: {role} ({side.uri}) has no tokenizer.json to verify {what}")
            continue
        full = extends and role == "domain"
        moved = moved_tokens(base, side.tokens, None if full else shared)
        if moved:
            verb = "does not extend" if full else "does not match"
            problems.append(
                f"vocab: the {role} tokenizer ({side.uri}) {verb} the base's: {len(moved)} base token(s) "
                f"missing or at another id (e.g. {moved[:5]!r}); their embedding rows would be mixed up"
            )
    return problems


def stage_triplet(uris: dict[str, str], staging_dir: str, allow_pickle: bool = False) -> dict[str, Path]:
    """Local folders of the three models (see :func:`modelio.stage_model`); every folder that cannot be
    staged (no or broken config.json, refused pickle weights, ...) is reported at once."""
    problems: list[str] = []
    folders: dict[str, Path] = {}
    for role in ROLES:
        try:
            folders[role] = modelio.stage_model(uris[role], staging_dir, allow_pickle)
        except modelio.ModelFormatError as exc:
            problems.append(f"{role} ({uris[role]}): {exc}")
    if problems:
        raise PreflightError(problems)
    return folders


def load_triplet(
    uris: dict[str, str],
    folders: dict[str, Path],
    *,
    policy: Literal["merge", "shared"] = "merge",
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
                    f"{r} ({s.uri}): config.json has auto_map (custom modelling code); refused, nothing was run "
                    "(set `models.trust_remote_code: true` to allow it)"
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
            if i.dt is None:
                problems.append(f"tensor {name}: unsupported dtype {i.dtype} in {r}")
        # Float formats may differ (continual pretraining often keeps fp32 master weights of a bf16 base):
        # every input is upcast exactly, and merge.dtype names the output's. Integer tensors must match.
        dtypes = {i.dtype for i in infos.values()}
        if len(dtypes) > 1 and not all(i.is_float for i in infos.values()):
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
    vb, vi, vd = vsize["base"], vsize["instruct"], vsize["domain"]
    extends = policy == "merge" and vd is not None and vb is not None and vd > vb
    if vocab_rows or len(set(vsize.values())) > 1:
        if policy == "merge":
            if vi != vb:
                problems.append(
                    f"vocab: instruct vocab_size {vi} differs from base {vb}; the instruction vector needs the "
                    "base's vocab (instruct-only token rows cannot be placed next to the domain's extension)"
                )
            if vd is not None and vb is not None and vd < vb:
                problems.append(
                    f"vocab: domain vocab_size {vd} is smaller than base {vb}; the merge would drop rows (refused)"
                )
        vocab["shared"] = min(v for v in vsize.values() if v is not None) if any(vsize.values()) else None
    else:
        vocab["shared"] = vsize["base"]
    vocab["output"] = vsize["domain"]
    vocab["rows_domain_only"] = max(0, (vsize["domain"] or 0) - (vocab["shared"] or 0))
    problems += _token_id_problems(sides, vocab["shared"], extends, warnings)

    ti, td = inst.tokens, dom.tokens
    if ti is not None and td is not None:
        lost = moved_tokens(ti, td)
        if lost:
            warnings.append(
                f"tokenizer: {len(lost)} instruct token(s) missing or at another id in the domain tokenizer "
                f"(e.g. {lost[:5]!r}); a chat template using them may break"
            )

    if problems:
        raise PreflightError(problems)
    names = sorted(all_names)
    return Triplet(base, inst, dom, names, vocab_rows, vocab, warnings)
